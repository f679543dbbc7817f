"""Tiny random Sa2VA models: batched inference, scripted answers, [SEG] hidden states, SAM2 path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa2va_queue.worker.backends.sa2va import hiera, modeling, tiny
from sa2va_queue.worker.backends.sa2va.config import IMG_CONTEXT_TOKEN
from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

FAMILIES = ["qwen2", "internlm2", "internvl3-qwen2.5"]
PROMPT = "<image>Please segment the blood vessel."


def prob_tolerance(model: torch.nn.Module) -> float:
    """Largest |batched - one-by-one| probability difference to accept for this model's dtype and
    device. Both runs do the same math with other kernel blockings (batch size, thread count), so
    they differ by rounding only: fp32 on a CPU gave up to 1.5e-4 on a 16-core host (1e-3 leaves
    room), CUDA convolutions in fp32 may use TF32, 16-bit dtypes round far more. A batching bug
    (wrong padding, image or position) moves probabilities by tenths."""
    p = next(model.parameters())
    base = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}[p.dtype]
    return base * (10 if p.device.type == "cuda" and p.dtype == torch.float32 else 1)


def assert_same_map(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    assert float(np.abs(a - b).max()) < tol
    flipped = (a > 0.5) != (b > 0.5)  # only pixels within rounding of the threshold may flip
    assert np.all(np.abs(a[flipped] - 0.5) < tol)


@pytest.fixture(scope="module", params=FAMILIES)
def built(request):
    return tiny.build_tiny(request.param, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 255, (40, 60, 3), dtype=np.uint8),  # several tiles + thumbnail
        rng.integers(0, 255, (28, 28, 3), dtype=np.uint8),  # exactly one tile
        rng.integers(0, 255, (90, 31, 3), dtype=np.uint8),  # tall, odd width
    ]


def test_batched_equals_one_by_one_forced(built, images):
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].")
    batch = pipe.segment(images, [PROMPT] * 3)
    for img, out in zip(images, batch):
        single = pipe.segment([img], [PROMPT])[0]
        assert out.text == single.text == "Sure, [SEG]."
        assert out.n_seg == single.n_seg == 1
        prob = out.probabilities[0]
        assert prob.shape == img.shape[:2] and prob.dtype == np.float32
        assert_same_map(prob, single.probabilities[0], prob_tolerance(model))
        # a real map, not a constant: the random model still responds to the image
        assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob.std() > 1e-4


def test_batched_equals_one_by_one_free_generation(built, images):
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg, max_new_tokens=6)
    batch = pipe.segment(images, [PROMPT, "<image>Where is the artery?", PROMPT])
    singles = [pipe.segment([images[0]], [PROMPT])[0], pipe.segment([images[1]], ["<image>Where is the artery?"])[0],
               pipe.segment([images[2]], [PROMPT])[0]]
    for out, single in zip(batch, singles):
        assert out.tokens == single.tokens
        assert 1 <= len(out.tokens) <= 6
        assert out.n_seg == single.n_seg
        for a, b in zip(out.probabilities, single.probabilities):
            assert_same_map(a, b, prob_tolerance(model))


def test_answer_without_seg_gives_no_probability(built, images):
    model, tok, cfg = built
    out = Sa2VAPipeline(model, tok, cfg, force_answer="There is no vessel.").segment(images[:2], [PROMPT] * 2)
    assert [o.text for o in out] == ["There is no vessel."] * 2
    assert all(o.n_seg == 0 for o in out)


def test_seg_hidden_state_equals_full_forward(built, images):
    """The KV-cached hidden state collected at the [SEG] input equals a full forward over prompt + answer."""
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, it is [SEG].")
    prep = pipe.prepare(images[0], PROMPT)
    vit = model.extract_feature(prep.pixel_values)
    gen = model.generate([prep.input_ids], [vit], img_context_id=pipe.img_context_id, seg_id=pipe.seg_id,
                         pad_id=pipe.pad_id, stop_ids=pipe.stop_ids, max_new_tokens=50, forced=[pipe.forced_ids])
    assert gen.tokens[0] == pipe.forced_ids
    seq = prep.input_ids + gen.tokens[0][:-1]
    ids = torch.tensor([seq])
    with torch.no_grad():
        emb = model.language_model.get_input_embeddings()(ids).clone()
        emb[ids == tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)] = vit.reshape(-1, vit.shape[-1])
        full = model.language_model.model(inputs_embeds=emb).last_hidden_state[0]
    pos = [i for i, t in enumerate(seq) if t == pipe.seg_id and i >= len(prep.input_ids)]
    assert len(pos) == len(gen.seg_hidden[0]) == 1
    torch.testing.assert_close(gen.seg_hidden[0][0], full[pos[0]], atol=1e-4, rtol=1e-4)


def _kwargs(pipe, max_new_tokens=50):
    return dict(img_context_id=pipe.img_context_id, seg_id=pipe.seg_id, pad_id=pipe.pad_id, stop_ids=pipe.stop_ids,
                max_new_tokens=max_new_tokens)


def test_scripted_one_pass_equals_kv_cached_steps(built, images):
    """A scripted answer goes through the language model in one forward with the prompt; its [SEG]
    hidden states equal those of KV-cached step-by-step decoding that chooses the same tokens."""
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, it is [SEG] and [SEG].")
    script = pipe.forced_ids
    prep = [pipe.prepare(im, PROMPT) for im in images]  # three prompt lengths: left padding
    with torch.no_grad():
        vit = [model.extract_feature(p.pixel_values) for p in prep]
    ids = [p.input_ids for p in prep]
    one = model.generate(ids, vit, forced=[script] * 3, **_kwargs(pipe))
    calls = iter(range(1000))

    def scripted_logits(h):  # step k of greedy decoding "chooses" script[k]
        out = torch.zeros(h.shape[0], cfg.text.vocab_size)
        out[:, script[min(next(calls), len(script) - 1)]] = 1.0
        return out

    model._logits = scripted_logits
    try:
        steps = model.generate(ids, vit, **_kwargs(pipe))
    finally:
        del model._logits
    assert one.tokens == steps.tokens == [script] * 3
    for a, b in zip(one.seg_hidden, steps.seg_hidden):
        assert len(a) == len(b) == 2
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_scripted_answer_limits_as_step_decoding(built, images):
    """max_new_tokens cuts a script as it cuts decoding; a script without a stop token feeds its last
    token (decoding goes on after it), one that ends in a stop token or the limit does not."""
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg)
    prep = pipe.prepare(images[0], PROMPT)
    with torch.no_grad():
        vit = [model.extract_feature(prep.pixel_values)]
    seg, stop = pipe.seg_id, sorted(pipe.stop_ids)[0]
    cases = [([7, seg, stop], 50, [7, seg, stop], 1), ([7, seg], 50, [7, seg], 1), ([7, seg, 9], 2, [7, seg], 0),
             ([seg, stop, 7], 50, [seg, stop], 1), ([7, seg], 2, [7, seg], 0)]
    for script, limit, tokens, n_seg in cases:
        out = model.generate([prep.input_ids], vit, forced=[script], **_kwargs(pipe, limit))
        assert out.tokens == [tokens] and len(out.seg_hidden[0]) == n_seg, (script, limit)


def test_draft_answer_gives_greedy_answers(built, images):
    """A draft equal to one image's greedy answer is accepted for it in one forward; the images whose
    greedy answer leaves the draft are decoded step by step. Tokens and masks are those of greedy
    decoding without a draft."""
    model, tok, cfg = built
    plain = Sa2VAPipeline(model, tok, cfg, max_new_tokens=5, draft_answer=None)
    singles = [plain.segment([im], [PROMPT])[0] for im in images]
    drafted = Sa2VAPipeline(model, tok, cfg, max_new_tokens=5)
    drafted.draft_ids = list(singles[0].tokens)
    stepped = []
    orig = model._step_generate
    model._step_generate = lambda ids, *a: stepped.append(len(ids)) or orig(ids, *a)
    try:
        out = drafted.segment(images, [PROMPT] * 3)
    finally:
        del model._step_generate
    assert [o.tokens for o in out] == [s.tokens for s in singles]
    rejected = sum(s.tokens != singles[0].tokens for s in singles)
    assert stepped == ([rejected] if rejected else [])
    for o, s in zip(out, singles):
        for a, b in zip(o.probabilities, s.probabilities):
            assert_same_map(a, b, prob_tolerance(model))


def test_sam_features_equal_library_path(built):
    """modeling.sam_features (one plain graph, no position encodings) computes what
    Sam2Model.get_image_features + the no-memory embedding compute, bit for bit."""
    model, _, cfg = built
    ge = model.grounding_encoder
    assert modeling.has_hiera_layout(ge)
    x = torch.randn(2, 3, cfg.sam_image_size, cfg.sam_image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = modeling.sam_features(ge, x)
        lib = list(ge.get_image_features(x).fpn_hidden_states)  # each (h*w, B, C)
    lib[-1] = lib[-1] + ge.no_memory_embedding
    for a, b in zip(ours, lib):
        assert torch.equal(a, b.permute(1, 2, 0).reshape(a.shape))


def test_window_major_trunk_equals_library_blocks(built):
    """hiera.trunk_stages (tokens kept in window order between blocks) gives the library blocks'
    stage outputs bit for bit in fp32, with the fused attention too; an input whose token map
    does not divide into whole windows takes the library's blocks."""
    model, _, cfg = built
    ge = model.grounding_encoder
    trunk = ge.vision_encoder.backbone
    s = cfg.sam_image_size
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lib = modeling.sam_features(ge, x)
        assert hiera.fits_window_major(trunk, s // 4, s // 4)
        ours = modeling.sam_features(ge, x, window_major=True)
        for a, b in zip(ours, lib):
            assert torch.equal(a, b)
        odd = torch.randn(1, 3, s - 32, s - 32, generator=torch.Generator().manual_seed(2))
        assert not hiera.fits_window_major(trunk, (s - 32) // 4, (s - 32) // 4)
        for a, b in zip(modeling.sam_features(ge, odd, window_major=True), modeling.sam_features(ge, odd)):
            assert torch.equal(a, b)


def test_window_major_option_gives_the_same_masks_and_routing_key(images):
    """`sam_window_major=1` reaches the pipeline, gives the default's probabilities bit for bit
    (fp32, CPU), and leaves the routing key alone (a runtime choice, like compile)."""
    from sa2va_queue.core.modelspec import ModelSpec
    from sa2va_queue.worker.backends.sa2va.backend import Sa2VAModel

    base = "sa2va:tiny?force_answer=Sure, [SEG]."
    assert ModelSpec.parse(base + "&sam_window_major=1").key == ModelSpec.parse(base).key
    worded = Sa2VAModel(ModelSpec.parse(base + "&sam_autocast=off&sam_window_major=on"))
    assert (worded.sam_autocast, worded.sam_window_major) == (False, True)
    outs = []
    for flag in ("0", "1"):
        m = Sa2VAModel(ModelSpec.parse(f"{base}&sam_window_major={flag}"))
        m.setup("cpu")
        assert m.pipeline.sam_window_major is (flag == "1")
        outs.append(m.pipeline.segment(images[:2], [PROMPT] * 2))
    for a, b in zip(*outs):
        for pa, pb in zip(a.probabilities, b.probabilities, strict=True):
            assert np.array_equal(pa, pb)


def test_several_seg_encode_image_once(built, images):
    model, tok, cfg = built
    pipe = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG] and [SEG].")
    calls = []
    orig = model.sam_image_features
    model.sam_image_features = lambda x, **kw: calls.append(x.shape[0]) or orig(x, **kw)
    try:
        out = pipe.segment(images, [PROMPT] * 3)
    finally:
        del model.sam_image_features
    assert calls == [3]  # one SAM2 encoder call for the whole batch, one row per image
    assert all(o.n_seg == 2 for o in out)
    # two different [SEG] positions -> two different language embeddings -> different maps
    assert float(np.abs(out[0].probabilities[0] - out[0].probabilities[1]).max()) > 0


def test_scripted_answer_is_stepwise_like_free_generation(built, images):
    """Forcing exactly what greedy decoding produced reproduces its tokens and masks."""
    model, tok, cfg = built
    free = Sa2VAPipeline(model, tok, cfg, max_new_tokens=5).segment(images[:1], [PROMPT])[0]
    forced = Sa2VAPipeline(model, tok, cfg, max_new_tokens=5)
    forced.forced_ids = list(free.tokens)
    out = forced.segment(images[:1], [PROMPT])[0]
    assert out.tokens == free.tokens and out.n_seg == free.n_seg


def test_bf16_runs_on_cpu(images):
    model, tok, cfg = tiny.build_tiny("qwen2", dtype=torch.bfloat16)
    out = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].").segment(images[:2], [PROMPT] * 2)
    assert [o.probabilities[0].shape for o in out] == [(40, 60), (28, 28)]
    assert all(o.probabilities[0].dtype == np.float32 for o in out)


def test_seeds_give_different_models(images):
    a = tiny.build_tiny("qwen2", seed=0)
    b = tiny.build_tiny("qwen2", seed=1)
    pa = Sa2VAPipeline(*a, force_answer="Sure, [SEG].").segment(images[:1], [PROMPT])[0].probabilities[0]
    pb = Sa2VAPipeline(*b, force_answer="Sure, [SEG].").segment(images[:1], [PROMPT])[0].probabilities[0]
    assert float(np.abs(pa - pb).max()) > 1e-3


@pytest.mark.gpu
def test_bf16_cuda_matches_fp32_cpu(images):
    model, tok, cfg = tiny.build_tiny("internlm2")
    ref = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].").segment(images, [PROMPT] * 3)
    gpu_model, _, _ = tiny.build_tiny("internlm2", dtype=torch.bfloat16)
    out = Sa2VAPipeline(gpu_model.to("cuda"), tok, cfg, force_answer="Sure, [SEG].").segment(images, [PROMPT] * 3)
    for a, b in zip(ref, out):
        assert a.probabilities[0].shape == b.probabilities[0].shape
        assert float(np.abs(a.probabilities[0] - b.probabilities[0]).mean()) < 0.05


@pytest.mark.gpu
def test_batched_equals_one_by_one_bf16_cuda(images):
    model, tok, cfg = tiny.build_tiny("qwen2", dtype=torch.bfloat16)
    model = model.to("cuda")
    pipe = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].")
    batch = pipe.segment(images, [PROMPT] * 3)
    for img, out in zip(images, batch):
        single = pipe.segment([img], [PROMPT])[0]
        assert out.text == single.text == "Sure, [SEG]."
        assert_same_map(out.probabilities[0], single.probabilities[0], prob_tolerance(model))



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fused_lm_ops_are_the_library_forward(built, images, monkeypatch):
    """The RMSNorm / SiLU-gate functions that compile_llm routes the language model through compute
    the library's forwards bit for bit (uncompiled here); the state dict is untouched, and None
    restores the library's forwards."""
    model, tok, cfg = built
    lm = model.language_model
    keys = list(model.state_dict())
    x = torch.randn(2, 7, cfg.text.hidden_size, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(modeling, "FUSED_MIN_ROWS", 1)
    calls = []
    ops = {"rms_norm": lambda *a: calls.append("n") or modeling.rms_norm(*a),
           "silu_mul": lambda *a: calls.append("m") or modeling.silu_mul(*a)}
    with torch.no_grad():
        ref = lm.model(inputs_embeds=x).last_hidden_state
        n = modeling.use_fused_lm_ops(lm, ops)
        try:
            assert n == 3 * cfg.text.num_hidden_layers + 1  # two norms and one MLP a layer, the final norm
            assert list(model.state_dict()) == keys
            assert torch.equal(lm.model(inputs_embeds=x).last_hidden_state, ref)
            assert len(calls) == n
            monkeypatch.setattr(modeling, "FUSED_MIN_ROWS", 15)  # 14 rows: the library's forwards
            assert torch.equal(lm.model(inputs_embeds=x).last_hidden_state, ref) and len(calls) == n
        finally:
            modeling.use_fused_lm_ops(lm, None)
    assert all("forward" not in m.__dict__ for m in lm.modules() if type(m).__name__.endswith(("RMSNorm", "MLP")))


@pytest.mark.gpu
def test_side_stream_gives_the_same_masks_cuda(images):
    model, tok, cfg = tiny.build_tiny("qwen2", dtype=torch.bfloat16)
    model = model.to("cuda")
    ref = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].", overlap_sam=False).segment(images, [PROMPT] * 3)
    out = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].", overlap_sam=True).segment(images, [PROMPT] * 3)
    for a, b in zip(out, ref):
        assert_same_map(a.probabilities[0], b.probabilities[0], prob_tolerance(model))


@pytest.mark.gpu
def test_window_major_trunk_equals_library_blocks_cuda():
    """The window-major trunk on a bf16 CUDA model under autocast: eager, the same kernels on the
    same rows in another order as the library's blocks (GEMM blockings may differ with the
    order: far below bf16's step); compiled, within bf16 rounding of them."""
    from sa2va_queue.worker.backends.sa2va.pipeline import _compile, _window_major_features

    model, _, cfg = tiny.build_tiny("qwen2", dtype=torch.bfloat16)
    ge = model.to("cuda").grounding_encoder
    modeling.use_fused_hiera_attention(ge)
    x = torch.randn(3, 3, cfg.sam_image_size, cfg.sam_image_size, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        lib = modeling.sam_features(ge, x)
        for a, b in zip(modeling.sam_features(ge, x, window_major=True), lib):
            assert _rel(a, b) < 1e-3
        for a, b in zip(_compile(_window_major_features)(ge, x), lib):
            assert _rel(a, b) < 3e-2


@pytest.mark.gpu
def test_compiled_paths_as_close_to_fp32_as_eager_cuda(images, monkeypatch):
    """Compiled SAM2 features and compiled LM ops on a bf16 CUDA model: as far from an fp32 reference
    as the eager bf16 computation is (the same function, other roundings: bf16 level, ~1e-2)."""
    from sa2va_queue.worker.backends.sa2va.pipeline import _compile

    ref_model, _, cfg = tiny.build_tiny("qwen2")
    ref_model = ref_model.to("cuda")
    model, _, _ = tiny.build_tiny("qwen2", dtype=torch.bfloat16)
    model = model.to("cuda")
    x = torch.randn(3, 3, cfg.sam_image_size, cfg.sam_image_size, device="cuda")
    with torch.no_grad():
        ref = modeling.sam_features(ref_model.grounding_encoder, x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager = modeling.sam_features(model.grounding_encoder, x.bfloat16())
            comp = model.sam_image_features(x, features_fn=_compile(modeling.sam_features))
        for c, e, r in zip(comp, eager, ref):
            assert _rel(c, e) < 3e-2 and _rel(c, r) < 1.5 * _rel(e, r) + 1e-3
        h = torch.randn(3, 11, cfg.text.hidden_size, device="cuda")
        ref_h = ref_model.language_model.model(inputs_embeds=h).last_hidden_state
        eager_h = model.language_model.model(inputs_embeds=h.bfloat16()).last_hidden_state
        monkeypatch.setattr(modeling, "FUSED_MIN_ROWS", 1)  # 33 rows here
        modeling.use_fused_lm_ops(model.language_model, {"rms_norm": _compile(modeling.rms_norm),
                                                         "silu_mul": _compile(modeling.silu_mul)})
        comp_h = model.language_model.model(inputs_embeds=h.bfloat16()).last_hidden_state
    assert _rel(comp_h, eager_h) < 3e-2 and _rel(comp_h, ref_h) < 1.5 * _rel(eager_h, ref_h) + 1e-3
