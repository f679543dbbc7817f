"""Our SAM2 mask decoder alone, fed the inputs each run of a parity case saved (SAM2 features and
language embedding of the fp32 truth, the official bf16 run and ours), in fp32 and in bf16: how far
its three masks lie from the truth's, as RMS error over the truth's RMS. One JSON object.

With the truth's own inputs in fp32 it must give the truth's masks (the two decoders compute the
same function); the bf16 rows show how much the decoder's own rounding adds, and how much that
moves with input perturbations as small as the runs' (so whether a few cases can rank two
implementations at all).

    python bench/parity_official.py ... --truth fp32 --keep-folders --out OUT   # first
    python bench/parity_decoder.py OUT/Sa2VA-1B [--case 0] [--device cpu|cuda] [--decode one-pass]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_official import _rms_rel as rms_rel  # noqa: E402  (the harness's stage measure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case_dir", type=Path, help="one model's folder of a parity run (holds model/ and truth/)")
    ap.add_argument("--case", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decode", default="one-pass", help="which of our saved runs: one-pass or steps")
    args = ap.parse_args()

    import torch

    from sa2va_queue.worker.backends.sa2va.checkpoint import load_folder

    d, i = args.case_dir, args.case
    runs = {"truth": dict(np.load(d / f"truth/official_forced{i}.npz")),
            "official": dict(np.load(d / f"official_forced{i}.npz")),
            "ours": dict(np.load(d / f"ours_{args.decode}{i}.npz"))}
    truth = runs["truth"]["low_res_multi"]
    out: dict = {"benchmark": "parity_decoder", "case": i, "device": args.device, "torch": torch.__version__,
                 "input_rms_rel_vs_truth": {name: {k: rms_rel(r[k], runs["truth"][k]) for k in
                                                   ("sam_feat0", "sam_feat1", "sam_feat2", "lang_embd")}
                                            for name, r in runs.items() if name != "truth"},
                 "saved_runs_vs_truth": {name: rms_rel(r["low_res_multi"], truth) for name, r in runs.items()
                                         if name != "truth"}}
    for dtype in ("fp32", "bf16"):
        model = load_folder(d / "model", dtype=dtype, device=args.device).model
        dt = torch.float32 if dtype == "fp32" else torch.bfloat16
        seen: dict = {}
        hook = model.grounding_encoder.mask_decoder.register_forward_hook(
            lambda mod, a, o: seen.__setitem__("multi", o[0][:, 0].float().cpu().numpy()))
        rows = {}
        for fname, feats_from in runs.items():
            for lname, lang_from in runs.items():
                feats = [torch.from_numpy(feats_from[f"sam_feat{k}"]).to(args.device, dt) for k in range(3)]
                lang = torch.from_numpy(lang_from["lang_embd"])
                # on CUDA in bf16 the pipeline runs SAM2 under autocast (as the official code): so here
                with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda" and dtype == "bf16"):
                    model.sam_decode(feats, torch.zeros(lang.shape[0], dtype=torch.long), lang)
                rows[f"feats={fname},lang={lname}"] = round(rms_rel(seen["multi"], truth), 5)
        hook.remove()
        out[f"ours_decoder_{dtype}_vs_truth"] = rows
        del model
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
