"""Sa2VA runtime: a native re-implementation of Sa2VA inference on transformers 5 building blocks.

    config.py      official config.json <-> transformers sub-configs (Sa2VAConfig), supported families
    processing.py  tiling, SAM2 resize, prompt template, tokenizer loading (PreparedInput)
    modeling.py    Sa2VAForSegmentation: vision tower, projector, LM, text_hidden_fcs, Sam2Model
    pipeline.py    Sa2VAPipeline: batched inference (segment / prepare / run), forced answers
    keymap.py      official <-> our key names (explicit two-way table)
    checkpoint.py  load_folder (strict accounting)
    weightfiles.py weight files, folder_hash / manifest_hash, start_folder_hash (no torch)
    convert.py     training .pth + base folder -> official-layout folder with manifest.json
    placement.py   balanced accelerate device maps on the meta device
    tiny.py        tiny random models of each family; write_official_folder
    backend.py     Sa2VAModel, the `sa2va` SegmentationModel
"""
