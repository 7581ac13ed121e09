"""Evaluation: long-text perplexity, needle retrieval, KV spectra, their commands, JSON and plots."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from tinymodel import byte_tokenizer, save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cli.app import run
from freqkv_cli.engine.streaming import GenerationResult
from freqkv_cli.errors import EXIT_INPUT, EXIT_USAGE, UsageError
from freqkv_cli.evaluation import choices, needle, perplexity, plots, spectrum
from freqkv_cli.models.loading import LoadedModel
from freqkv_cli.session.session import Session

SAMPLES = Path(__file__).parent.parent / "samples"
BOTCHAN = (SAMPLES / "botchan.txt").read_text()


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(
    not has_matplotlib(), reason="matplotlib is an optional extra: pip install 'freqkv-cli[plot]'"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("doc") / "book.txt"
    path.write_text(BOTCHAN[:6000])  # 6,000 byte tokens
    return path


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    tokenizer = byte_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=4096)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LoadedModel(model, tokenizer, "tiny", "llama", None)


def random_ids(count: int, vocab: int = 211, seed: int = 1) -> list[int]:
    return torch.randint(0, vocab, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- perplexity ------------------------------------------------------------------------------
def test_full_policy_perplexity_equals_a_plain_forward(family: str) -> None:
    model = tiny_model(family)
    ids = random_ids(300)
    # Small chunks and logit blocks: their boundaries must not change a single loss.
    result = perplexity.run_perplexity(model, CachePolicy(kind="full"), ids, max_chunk=64, block=50)
    with torch.no_grad():
        loss = float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert result.tokens == 299 and result.length == 300
    assert result.nll == pytest.approx(loss, abs=1e-5)
    assert result.ppl == pytest.approx(math.exp(loss), rel=1e-5)
    weighted = sum(b.nll * (b.end - b.start) for b in result.buckets) / result.tokens
    assert weighted == pytest.approx(result.nll, abs=1e-9)


def test_windowed_policies_equal_full_until_the_window_fills_then_differ() -> None:
    model = tiny_model("llama")
    ids = random_ids(300)
    full = perplexity.stream_nll(model, CachePolicy(kind="full"), ids)
    for kind in ("sink", "freqkv"):
        policy = CachePolicy(kind=kind, window=128)
        windowed = perplexity.stream_nll(model, policy, ids)
        assert windowed.shape == full.shape and torch.isfinite(windowed).all()
        torch.testing.assert_close(windowed[:127], full[:127], atol=1e-5, rtol=1e-5)  # nothing evicted yet
        assert not torch.allclose(windowed[200:], full[200:], atol=1e-4)


def test_extrapolation_is_flagged_past_the_native_window_only() -> None:
    full, freqkv = CachePolicy(kind="full"), CachePolicy(kind="freqkv", window=1024)
    assert perplexity.uses_extrapolation(full, 5000, native_window=4096)
    assert not perplexity.uses_extrapolation(full, 4096, native_window=4096)
    assert not perplexity.uses_extrapolation(freqkv, 100_000, native_window=4096)  # positions < window
    assert perplexity.uses_extrapolation(CachePolicy(kind="sink", window=8192), 9000, native_window=4096)
    assert not perplexity.uses_extrapolation(full, 10**6, native_window=0)  # unknown: not flagged


def test_position_buckets_cover_every_scored_token_once() -> None:
    nll = torch.arange(10, dtype=torch.float32)  # losses of tokens 1..10
    buckets = perplexity.position_buckets(nll, 3)
    assert [(b.start, b.end) for b in buckets] == [(1, 4), (4, 8), (8, 11)]
    assert [b.nll for b in buckets] == [1.0, 4.5, 8.0]
    assert len(perplexity.position_buckets(nll, 64)) == 10  # never an empty bucket


def test_summary_pools_files_at_each_length() -> None:
    runs = [
        perplexity.PerplexityRun("a", "freqkv", 11, 10, 1.0, 1.0, False),
        perplexity.PerplexityRun("b", "freqkv", 11, 10, 2.0, 2.0, True),
        perplexity.PerplexityRun("a", "full", 11, 10, 3.0, 1.0, False),
        perplexity.PerplexityRun("a", "full", 21, 20, 4.0, 1.0, False),
    ]
    pooled, full, longer = perplexity.perplexity_summary(runs)
    assert (pooled.cache, pooled.files, pooled.tokens, pooled.extrapolated) == ("freqkv", 2, 20, True)
    assert pooled.nll == pytest.approx(1.5) and pooled.ppl == pytest.approx(math.exp(1.5))
    assert pooled.seconds == pytest.approx(3.0)
    assert (full.cache, full.length, full.nll) == ("full", 11, 3.0)
    assert (longer.length, longer.files, longer.nll) == (21, 1, 4.0)


def test_first_tokens_of_a_prefix_are_those_of_the_whole_text() -> None:
    words: dict[str, int] = {}

    def encode(text: str) -> list[int]:  # word-level: a cut inside a word changes the last token
        return [words.setdefault(word, len(words)) for word in re.findall(r"\S+", text)]

    whole = encode(BOTCHAN)
    for count in (1, 50, 3000):
        assert perplexity.first_tokens(encode, BOTCHAN, count) == whole[:count]
    assert perplexity.first_tokens(encode, BOTCHAN, len(whole)) == whole
    assert perplexity.first_tokens(encode, BOTCHAN, len(whole) + 1) is None


def test_lists_on_the_command_line() -> None:
    assert choices.parse_lengths("8k, 4k,4096") == [4096, 8192]
    assert choices.parse_policies("full,FreqKV,full") == ["full", "freqkv"]
    assert choices.parse_depths("1,0,0.5") == [0.0, 0.5, 1.0]
    for bad in ("", "4k,", "4x", "1"):
        with pytest.raises(UsageError):
            choices.parse_lengths(bad)
    with pytest.raises(UsageError, match="lru"):
        choices.parse_policies("full,lru")
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(UsageError):
            choices.parse_depths(bad)


# -- needle ------------------------------------------------------------------------------------
def test_needle_scoring_is_exact() -> None:
    assert needle.score_answer("The pass key is 48213.", "48213")
    assert needle.score_answer("48213", "48213")
    assert needle.score_answer(" 48213 is the pass key", "48213")
    for wrong in ("482130", "4821", "48,213", "The key is 12345, not 48213", "", "I do not know."):
        assert not needle.score_answer(wrong, "48213"), wrong


def test_keys_are_five_digits_repeatable_and_vary() -> None:
    keys = {needle.make_key(seed, 4096, 0.5) for seed in range(20)}
    assert len(keys) > 15 and all(re.fullmatch(r"[1-9]\d{4}", key) for key in keys)
    assert needle.make_key(3, 4096, 0.25) == needle.make_key(3, 4096, 0.25)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_haystack_builder_puts_the_needle_at_the_requested_depth(depth: float) -> None:
    tokenizer = byte_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    doc = needle.build_document(encode, tokenizer.decode, needle.default_haystack(), 8000, depth, "48213")
    sentence = needle.NEEDLE.format(key="48213")
    assert doc.text.count(sentence) == 1 and doc.text.index(sentence) == doc.at
    assert abs(len(encode(doc.text)) - 8000) <= 2
    assert doc.placed == pytest.approx(depth, abs=0.03)
    assert doc.at / len(doc.text) == pytest.approx(depth, abs=0.03)
    if 0 < depth < 1:  # between sentences, not inside one
        assert doc.text[doc.at - 1].isspace() and doc.text[: doc.at].rstrip()[-1] in ".!?\"')"
    assert doc.repeats == 0


def test_short_haystack_is_repeated_to_the_length() -> None:
    tokenizer = byte_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    doc = needle.build_document(encode, tokenizer.decode, "One sentence. Two sentences. ", 500, 0.5, "11111")
    assert doc.repeats > 10 and abs(len(encode(doc.text)) - 500) <= 2
    with pytest.raises(UsageError):
        needle.build_document(encode, tokenizer.decode, "text", 10, 0.5, "11111")


class PlantedSession(Session):
    """Answers with a planted text instead of running the decoder."""

    planted = ""

    def generate(self, **kwargs: object) -> GenerationResult:
        return GenerationResult(token_ids=[], text=self.planted, stop_reason="eos")


@pytest.mark.parametrize("kind", ["full", "freqkv"])
def test_needle_trial_reads_the_whole_prompt_and_catches_a_planted_answer(
    loaded: LoadedModel, kind: str
) -> None:
    policy = CachePolicy(kind=kind, window=256)
    encode = lambda text: loaded.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    length = 600
    overhead = needle.prompt_overhead(Session(loaded, policy))
    doc = needle.build_document(encode, loaded.tokenizer.decode, BOTCHAN, length - overhead, 0.5, "48213")
    for planted, right in (("The pass key is 48213.", True), ("The pass key is 48231.", False)):
        session = PlantedSession(loaded, policy)
        session.planted = planted
        trial = needle.run_needle_trial(session, doc, length=length, seed=0)
        assert trial.correct is right and trial.key == "48213" and trial.answer == planted
        assert abs(trial.tokens - length) <= 3, trial.tokens  # the prompt is the requested length
        assert trial.cache == kind and trial.placed == doc.placed
    # The real decoder runs too; whatever a random model says, it is scored the same way.
    trial = needle.run_needle_trial(Session(loaded, policy), doc, length=length, seed=0, max_new_tokens=4)
    assert trial.correct == needle.score_answer(trial.answer, "48213")


def test_needle_accuracy_counts_per_cell() -> None:
    def trial(cache: str, depth: float, right: bool) -> needle.NeedleTrial:
        return needle.NeedleTrial(cache, 1024, depth, 0, "11111", "", right, 1024, depth, 0.1)

    cells = needle.needle_accuracy(
        [
            trial("full", 0.5, True),
            trial("full", 0.5, False),
            trial("sink", 0.5, False),
            trial("full", 1, True),
        ]
    )
    assert [(c.cache, c.depth, c.correct, c.trials) for c in cells] == [
        ("full", 0.5, 1, 2),
        ("sink", 0.5, 0, 1),
        ("full", 1.0, 1, 1),
    ]
    assert cells[0].accuracy == 0.5


# -- spectrum ----------------------------------------------------------------------------------
def smooth_signal(n: int = 1024, channels: int = 16) -> torch.Tensor:
    """Slow trends, as the paper finds in keys and values: ramps, parabolas, a few slow waves."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    k = torch.arange(channels, dtype=torch.float64)[None, :]
    signal = (k - 3) * t + (k % 3) * t**2 + torch.cos(math.pi * (1 + k % 4) * t) + 0.5 * k
    return signal[None, None].float()  # (1, 1, n, channels)


def test_smooth_signal_puts_its_energy_in_the_lowest_coefficients() -> None:
    x = smooth_signal()
    report = spectrum.band_energy(x, ratio=0.5)
    assert report.shares[0] >= 0.99  # the lowest 10%
    assert report.shares[0] <= report.shares[1] <= report.shares[2] <= 1.0
    assert report.error < 1e-3


def test_white_noise_spreads_its_energy_evenly() -> None:
    x = torch.randn(1, 2, 1024, 16, generator=torch.Generator().manual_seed(0))
    report = spectrum.band_energy(x, ratio=0.5)
    assert report.shares[0] < 0.15 and report.shares[0] == pytest.approx(0.10, abs=0.03)
    assert report.shares[2] == pytest.approx(0.50, abs=0.03)
    assert report.error == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_lowpass_error_is_the_energy_outside_the_kept_band(ratio: float) -> None:
    x = torch.randn(1, 3, 301, 8, generator=torch.Generator().manual_seed(2)).cumsum(dim=2)  # a random walk
    energy = spectrum.coefficient_energy(x)
    assert energy.sum().item() == pytest.approx(x.double().square().sum().item(), rel=1e-9)  # Parseval
    assert spectrum.lowpass_error(x, ratio) == pytest.approx(1 - spectrum.low_share(energy, ratio), abs=1e-6)


def test_spectrum_keys_are_taken_before_rope() -> None:
    model = tiny_model("llama")
    ids = random_ids(200)
    captured: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.k_proj.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        for layer in model.model.layers
    ]
    try:
        states = list(spectrum.layer_states(model, ids, skip=0))
    finally:
        for hook in hooks:
            hook.remove()
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for (keys, values), projected in zip(states, captured, strict=True):
        expected = projected.view(1, len(ids), -1, head_dim).transpose(1, 2)
        torch.testing.assert_close(keys, expected, atol=1e-4, rtol=1e-4)
        assert values.shape == keys.shape
    layers = spectrum.model_spectrum(model, ids, ratio=0.5, skip=4)
    assert len(layers) == 2 and all(0 <= s <= 1 for layer in layers for s in layer.keys.shares)


# -- plots -------------------------------------------------------------------------------------
def test_plot_without_matplotlib_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, doc: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(UsageError, match=r"pip install 'freqkv-cli\[plot\]'"):
        plots.require_matplotlib()
    assert run(["eval", "ppl", str(doc), "--plot", "x.png"]) == EXIT_USAGE  # before any model loads


@needs_matplotlib
def test_plots_are_written(tmp_path: Path) -> None:
    summary = [
        perplexity.PerplexitySummary(cache, length, 1, length - 1, 2.0 + i, 1.0, length > 4096)
        for i, cache in enumerate(("full", "sink", "freqkv"))
        for length in (2048, 4096, 8192)
    ]
    cells = [
        needle.NeedleCell(cache, length, depth, 3, (i + j) % 4)
        for i, cache in enumerate(("full", "freqkv"))
        for j, length in enumerate((2048, 4096))
        for depth in (0.0, 0.5, 1.0)
    ]
    layers = [
        spectrum.LayerSpectrum(
            i, spectrum.BandEnergy([0.9, 0.95, 0.99], 0.01), spectrum.BandEnergy([0.5, 0.7, 0.9], 0.1)
        )
        for i in range(4)
    ]
    written = [
        plots.plot_perplexity(summary, tmp_path / "ppl.png"),
        plots.plot_needle(cells, tmp_path / "needle.png", title="t"),
        plots.plot_spectrum(layers, 0.5, tmp_path / "spectrum.svg"),
    ]
    for path in written:
        assert path.stat().st_size > 1000
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UsageError, match="cannot write"):
        plots.plot_perplexity(summary, tmp_path / "missing" / "ppl.png")


# -- the commands ------------------------------------------------------------------------------
def test_eval_ppl_json_schema_skips_short_files_and_flags_extrapolation(
    tiny: str, doc: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["eval", "ppl", str(doc), "-m", tiny, "--lengths", "512,4200,9000", "--window", "1k"]
    plot = tmp_path / "ppl.png"
    code = run([*args, "--buckets", "4", "--json", *(["--plot", str(plot)] if has_matplotlib() else [])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "book.txt" in captured.err and "skipped" in captured.err  # 6,000 tokens < 9000
    data = json.loads(captured.out)
    assert (data["window"], data["sink"], data["ratio"], data["native_window"]) == (1024, 4, 0.5, 4096)
    assert data["caches"] == ["full", "sink", "freqkv", "hybrid"] and data["lengths"] == [512, 4200, 9000]
    assert data["skipped"] == [{"file": str(doc), "length": 9000, "tokens": 6000}]
    assert len(data["results"]) == 8
    for result in data["results"]:
        assert {"cache", "length", "ppl", "tokens", "seconds", "file", "extrapolated", "buckets"} <= set(
            result
        )
        assert result["tokens"] == result["length"] - 1 and result["ppl"] > 1 and len(result["buckets"]) == 4
        assert result["extrapolated"] == (result["cache"] == "full" and result["length"] == 4200)
    by = {(r["cache"], r["length"]): r["ppl"] for r in data["results"]}
    assert by[("full", 512)] == pytest.approx(by[("freqkv", 512)])  # 512 tokens fit the window
    assert by[("full", 4200)] != by[("freqkv", 4200)]
    assert [(row["cache"], row["length"]) for row in data["summary"]] == list(by)
    if has_matplotlib():
        assert plot.stat().st_size > 1000 and data["plot"] == str(plot)


def test_eval_ppl_table(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    code = run(
        ["eval", "ppl", str(doc), "-m", tiny, "--lengths", "300", "--cache", "full,freqkv", "-w", "256"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "perplexity" in out and "freqkv" in out and "loss along the context" in out


def test_eval_needle_json_schema(tiny: str, capsys: pytest.CaptureFixture) -> None:
    args = ["--lengths", "500", "--depths", "0,1", "--seeds", "2", "--cache", "full,freqkv", "-w", "256"]
    code = run(["eval", "needle", "-m", tiny, *args, "-n", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["depths"] == [0.0, 1.0] and data["seeds"] == 2 and data["question"] == needle.QUESTION
    assert len(data["results"]) == 8
    for trial in data["results"]:
        assert {"cache", "length", "depth", "seed", "key", "answer", "correct", "tokens"} <= set(trial)
        assert abs(trial["tokens"] - 500) <= 3 and trial["correct"] == needle.score_answer(
            trial["answer"], trial["key"]
        )
    keys = {(t["depth"], t["seed"]): t["key"] for t in data["results"] if t["cache"] == "full"}
    assert keys == {(t["depth"], t["seed"]): t["key"] for t in data["results"] if t["cache"] == "freqkv"}
    assert [(c["cache"], c["depth"], c["trials"]) for c in data["grid"]] == [
        ("full", 0.0, 2),
        ("freqkv", 0.0, 2),
        ("full", 1.0, 2),
        ("freqkv", 1.0, 2),
    ]
    assert set(data["accuracy"]) == {"full", "freqkv"}


def test_spectrum_json_schema(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    code = run(["spectrum", str(doc), "-m", tiny, "--tokens", "300", "--ratio", "0.25", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert (data["tokens"], data["skipped"], data["ratio"]) == (300, 4, 0.25)
    assert data["fractions"] == [0.1, 0.25, 0.5] and len(data["layers"]) == 2
    for layer in [*data["layers"], data["mean"]]:
        for part in (layer["keys"], layer["values"]):
            assert len(part["shares"]) == 3 and 0 <= part["error"] <= 1
    assert run(["spectrum", str(doc), "-m", tiny, "--tokens", "300"]) == 0
    assert "V error" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "ppl", "FILE", "--lengths", "4x"],
        ["eval", "ppl", "FILE", "--cache", "full,lru"],
        ["eval", "ppl", "FILE", "--ratio", "1.5"],
        ["eval", "needle", "--depths", "0.5,2"],
        ["spectrum", "FILE", "--tokens", "-3"],
    ],
)
def test_bad_flags_fail_fast(args: list[str], doc: Path, capsys: pytest.CaptureFixture) -> None:
    assert run([str(doc) if a == "FILE" else a for a in args]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("freqkv: error: ")


def test_nothing_long_enough_is_an_input_error(tiny: str, doc: Path) -> None:
    assert run(["eval", "ppl", str(doc), "-m", tiny, "--lengths", "64k"]) == EXIT_INPUT


@pytest.mark.parametrize("command", [["eval", "ppl"], ["eval", "needle"], ["spectrum"]])
def test_eval_commands_explain_themselves(command: list[str], capsys: pytest.CaptureFixture) -> None:
    assert run([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "--model" in out and "--json" in out
