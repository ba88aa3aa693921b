"""Int8 weights kept on disk: a decoder read back from the cache computes bit for bit what the built one
does, a damaged entry is rebuilt, and a cache that cannot be written never stops a load."""

import pytest
import torch
from structlog.testing import capture_logs

from llmserve.model_worker import weight_cache
from llmserve.model_worker.llama_decoder import LlamaDecoder, Segment
from llmserve.model_worker.loader import load_model
from tests.unit.test_rotation import small_llama

pytestmark = pytest.mark.unit

SHA = "ab" * 32
PROMPT = [5, 17, 250, 3, 99, 42, 7]


def logits(decoder: LlamaDecoder) -> torch.Tensor:
    cache = decoder.new_cache(1)
    cache.ensure(1, 16)
    first = decoder.forward([Segment(0, 0, PROMPT)], cache)
    step = decoder.forward([Segment(0, len(PROMPT), [11])], cache)
    return torch.cat([first, step])


def built(tied: bool = False, biases: bool = True) -> tuple[object, LlamaDecoder]:
    config, weights = small_llama(tied, biases)
    return config, LlamaDecoder(config, weights, "int8", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(("tied", "biases"), [(True, False), (False, True)])
def test_a_decoder_read_back_from_the_cache_computes_exactly_the_same(tmp_path, tied, biases):
    config, decoder = built(tied, biases)
    weight_cache.save(tmp_path, SHA, decoder)
    assert weight_cache.entry_path(tmp_path, SHA).is_file()
    with capture_logs() as logs:
        cached = weight_cache.load(tmp_path, SHA, config)
    assert cached is not None and [e["event"] for e in logs] == ["weight_cache_hit"]
    assert cached.scripted == decoder.scripted
    assert torch.equal(logits(cached), logits(decoder))
    ours, theirs = cached.int8_state(), decoder.int8_state()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_another_artifact_finds_no_entry(tmp_path):
    config, decoder = built()
    weight_cache.save(tmp_path, SHA, decoder)
    assert weight_cache.load(tmp_path, "cd" * 32, config) is None


def test_a_damaged_or_half_written_entry_is_not_loaded(tmp_path):
    config, decoder = built()
    weight_cache.save(tmp_path, SHA, decoder)
    entry = weight_cache.entry_path(tmp_path, SHA)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    with capture_logs() as logs:
        assert weight_cache.load(tmp_path, SHA, config) is None
    assert [e["event"] for e in logs] == ["weight_cache_damaged"]
    # An entry without its digest (a writer died between the two renames) is not trusted either.
    entry.with_name(entry.name + ".sha256").unlink()
    assert weight_cache.load(tmp_path, SHA, config) is None
    weight_cache.save(tmp_path, SHA, decoder)
    assert weight_cache.load(tmp_path, SHA, config) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".writing-")] == []


def test_a_cache_that_cannot_be_written_is_logged_and_skipped(tmp_path):
    _, decoder = built()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with capture_logs() as logs:
        weight_cache.save(blocked / "int8", SHA, decoder)
    assert [e["event"] for e in logs] == ["weight_cache_not_written"]


def test_a_float_decoder_has_no_int8_state():
    config, weights = small_llama(False, False)
    with pytest.raises(ValueError, match="int8 state"):
        LlamaDecoder(config, weights, "float", torch.device("cpu"), torch.float32, onednn=False).int8_state()


def test_the_real_model_loads_from_the_cache_the_second_time(smollm, model_store, flat_smollm, tmp_path):
    reference = flat_smollm("int8")  # built from the checkpoint, no cache
    path = model_store / smollm.path
    with capture_logs() as logs:
        first = load_model(path, smollm.sha256, device="cpu", dtype="float32", numerics="int8", weight_cache_dir=tmp_path)
        second = load_model(path, smollm.sha256, device="cpu", dtype="float32", numerics="int8", weight_cache_dir=tmp_path)
    events = [e["event"] for e in logs if e["event"].startswith("weight_cache")]
    assert events == ["weight_cache_written", "weight_cache_hit"]
    ids = reference.tokenizer("The capital of France is")["input_ids"]

    def prompt_logits(decoder: LlamaDecoder) -> torch.Tensor:
        cache = decoder.new_cache(1)
        cache.ensure(1, len(ids))
        return decoder.forward([Segment(0, 0, ids)], cache)

    expected = prompt_logits(reference.model)
    for loaded in (first, second):
        assert torch.equal(prompt_logits(loaded.model), expected)
    assert second.model.weight_bytes() == reference.model.weight_bytes()
