"""The PACS hook: DICOM Segmentation results, the C-STORE listener and sending results back."""
