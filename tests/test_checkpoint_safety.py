"""A checkpoint file never steers the program beyond its weights (issue 20): its tensors are
checked against their declared layout before the checksum reads them, its config against the
limits and its weights' shapes before a model is built, and non-finite values are refused; the
devices and window ids a caller passes get one-line errors that name the argument.

Dimensions: S samples, B windows, L lookback, H horizon, N variates."""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from pathlib import Path

import pytest
import torch
from tiny import TINY

from diffsample.forecast import ForecastConfig, ITransformerDiffusion, model_config
from diffsample.forecast import checkpoint as checkpoint_module
from diffsample.forecast.checkpoint import model_payload, write_checkpoint
from diffsample.forecast.model_config import CONFIG_LIMITS, state_shapes

NO_CUDA = not torch.cuda.is_available()


def tiny_model(**changes) -> ITransformerDiffusion:
    torch.manual_seed(0)
    return ITransformerDiffusion(dataclasses.replace(TINY, **changes)).eval()


def _payload(model: ITransformerDiffusion) -> dict:
    return {**model_payload(model.config, model.state_dict(), model.data_spec), "finished": True}


@pytest.fixture
def digests(monkeypatch) -> list[int]:
    """The checksum's calls, recorded: a refused layout must not reach it."""
    calls: list[int] = []
    real = checkpoint_module._digest

    def spy(payload):
        calls.append(1)
        return real(payload)

    monkeypatch.setattr(checkpoint_module, "_digest", spy)
    return calls


# ---------------------------------------------------------------- tensors against their layout
@pytest.mark.parametrize(
    ("where", "make", "why"),
    [
        # issue 20: a 47 KB file holding one expanded stride-0 tensor made the checksum allocate
        # 32 GiB; here 10**6 elements viewing 4 bytes
        (
            "extra",
            lambda: torch.zeros(1).expand(10**6),
            r"an expanded or non-contiguous tensor \(strides \(0,\)\) of shape \(1000000,\)",
        ),
        (
            "state_dict",
            lambda: torch.zeros(1, 3).expand(12, 3),  # the shape of backbone.head.weight
            r"an expanded or non-contiguous tensor \(strides \(0, 1\)\) of shape \(12, 3\)",
        ),
        (
            "resume",
            lambda: torch.arange(24.0).reshape(4, 6).t(),  # transposed: strides (1, 6)
            r"an expanded or non-contiguous tensor \(strides \(1, 6\)\) of shape \(6, 4\)",
        ),
    ],
)
def test_a_tensor_that_is_not_what_torch_save_writes_is_refused_before_hashing(
    tmp_path, digests, where, make, why
):
    payload = _payload(tiny_model())
    if where == "state_dict":
        payload["state_dict"] = {**payload["state_dict"], "backbone.head.weight": make()}
        pattern = r"state_dict\['backbone\.head\.weight'\]"
    elif where == "resume":
        payload["resume"] = {"optimizer": {"state": {0: {"exp_avg": make()}}}}
        pattern = r"resume\['optimizer'\]\['state'\]\[0\]\['exp_avg'\]"
    else:
        payload["extra"] = [make()]
        pattern = r"extra\[0\]"
    path = tmp_path / "crafted.pt"
    torch.save({**payload, "checksum": "0" * 64}, path)  # no real checksum: it would hash
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(path)
    message = str(info.value)
    assert re.fullmatch(
        rf"checkpoint: {re.escape(str(path))}: {pattern} is {why}, which torch\.save of a model "
        r"never writes; not loaded",
        message,
    ), message
    assert digests == []


def test_tensors_reading_one_storage_many_times_over_are_refused(tmp_path, digests):
    """Thousands of views of one small storage would make the checksum read gigabytes."""
    payload = _payload(tiny_model())
    base = torch.zeros(1000)
    payload["extra"] = [base] * 50  # one 4000-byte storage, read 50 times over
    path = tmp_path / "views.pt"
    torch.save({**payload, "checksum": "0" * 64}, path)
    with pytest.raises(ValueError, match=r"views\.pt: its tensors view \d+ bytes of \d+ bytes of "
                       r"storage \(more than 2 times over\)"):  # fmt: skip
        ITransformerDiffusion.load(path)
    assert digests == []


def _patched_zip(raw: bytes, patch) -> bytes:
    """``raw`` (a torch.save zip) with its pickle rewritten by ``patch``."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, patch(data) if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def test_a_tensor_declaring_more_elements_than_its_storage_is_refused(tmp_path):
    """torch itself refuses to view past a storage's end when it unpickles: one line still."""
    buf = io.BytesIO()
    torch.save({"format": checkpoint_module.FORMAT, "a": torch.arange(10.0)}, buf)
    raw = buf.getvalue()
    before = zipfile.ZipFile(io.BytesIO(raw)).read("archive/data.pkl")
    size = b"K\x00K\n\x85"  # storage offset 0, then the shape (10,)
    assert before.count(size) == 1
    path = tmp_path / "long.pt"
    path.write_bytes(_patched_zip(raw, lambda d: d.replace(size, b"K\x00Kd\x85")))  # (100,)
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(path)
    assert str(info.value).startswith(f"checkpoint: {path} is not a readable diffsample")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the config before any model
@pytest.fixture
def no_real_build(monkeypatch):
    """``arm()``: from then on, building a backbone anywhere but on the meta device fails the
    test (before it allocates anything)."""
    real = model_config.ITransformer

    def guarded(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a model was built before its config and weights were checked")
        return real(*args, **kwargs)

    return lambda: monkeypatch.setattr(model_config, "ITransformer", guarded)


def test_a_config_beyond_the_limits_is_refused_before_any_model_is_built(tmp_path, no_real_build):
    """issue 20: a config with d_model 65536 built a 48 GiB model before the weights were
    compared."""
    payload = _payload(tiny_model())
    payload["config"] = {**payload["config"], "d_model": 65536, "n_heads": 2}
    path = tmp_path / "wide.pt"
    write_checkpoint(path, payload)
    no_real_build()
    with pytest.raises(
        ValueError,
        match=rf"^checkpoint: {re.escape(str(path))}: bad config: d_model: expected an integer "
        r"<= 8192 \(the limit of ForecastConfig\), got int 65536$",
    ):
        ITransformerDiffusion.load(path)


def test_a_config_within_the_limits_is_compared_with_the_weights_before_building(
    tmp_path, no_real_build
):
    """Sizes each within bounds can still multiply into a huge model (d_model 4096, 64 layers:
    ~13 GiB); the file's small weights give it away before anything is built."""
    payload = _payload(tiny_model())
    payload["config"] = {**payload["config"], "d_model": 4096, "d_ff": 16384, "n_layers": 64}
    path = tmp_path / "deep.pt"
    write_checkpoint(path, payload)
    no_real_build()
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint: {path}: weights do not match the config: missing [")
    assert " more" in message and "\n" not in message and len(message) < 2000


def test_state_shapes_are_the_models_own():
    for changes in ({}, {"denoiser": "unet"}, {"history_stats": False, "n_time_features": 0}):
        model = tiny_model(**changes)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert state_shapes(model.config) == own


@pytest.mark.parametrize("field", sorted(set(CONFIG_LIMITS) - {"unet_levels", "unet_channels"}))
def test_every_size_of_the_config_is_bounded(field):
    limit = CONFIG_LIMITS[field]
    with pytest.raises(
        ValueError,
        match=rf"^{field}: expected an integer <= {limit} \(the limit of ForecastConfig\), "
        rf"got int {limit + 1}$",
    ):
        dataclasses.replace(ForecastConfig(), **{field: limit + 1})


def test_the_unet_levels_and_widths_are_bounded():
    with pytest.raises(ValueError, match=r"^unet_channels: expected at most 16 levels .*got 17$"):
        ForecastConfig(denoiser="unet", unet_channels=(8,) * 17)
    with pytest.raises(ValueError, match=r"^unet_channels\[1\]: expected an integer <= 8192"):
        ForecastConfig(denoiser="unet", unet_channels=(8, 8200))
    # the limits themselves are allowed (only the config is built, not a model)
    ForecastConfig(lookback=100_000, d_model=8192, n_heads=1024, n_layers=256, d_ff=65_536)


# ---------------------------------------------------------------- non-finite values
@pytest.mark.parametrize(
    ("key", "bad"),
    [("res_std", float("nan")), ("res_mean", float("inf")), ("backbone.head.bias", float("nan"))],
)
def test_non_finite_weights_or_statistics_are_refused(tmp_path, key, bad):
    """issue 20: NaN buffers loaded and `evaluate` exited 0 with null scores."""
    model = tiny_model()
    payload = _payload(model)
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state[key][0] = bad
    path = tmp_path / "nan.pt"
    write_checkpoint(path, {**payload, "state_dict": state})  # a valid checksum
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(path)
    assert str(info.value) == (
        f"checkpoint: {path}: state_dict[{key!r}] holds 1 NaN/inf value(s) in a torch.float32 "
        f"tensor of shape {tuple(state[key].shape)}; a trained model's weights and statistics "
        "are finite; not loaded"
    )


def test_integer_weights_are_refused(tmp_path):
    payload = _payload(tiny_model())
    state = dict(payload["state_dict"], res_std=torch.ones(3, dtype=torch.int64))
    path = tmp_path / "int.pt"
    write_checkpoint(path, {**payload, "state_dict": state})
    with pytest.raises(
        ValueError,
        match=r"int\.pt: state_dict\['res_std'\]: expected a floating-point tensor of weights, "
        r"got a torch\.int64 tensor of shape \(3,\)$",
    ):
        ITransformerDiffusion.load(path)


# ---------------------------------------------------------------- devices and window ids
def test_map_location_is_checked_and_named(tmp_path):
    """issue 20: load(map_location='bogus') was reported as a damaged file."""
    path = tiny_model().save(tmp_path / "model.pt")
    with pytest.raises(
        ValueError,
        match=r"^map_location: expected a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got "
        r"'bogus'$",
    ):
        ITransformerDiffusion.load(path, map_location="bogus")
    with pytest.raises(TypeError, match=r"^map_location: expected a device such as .*got int 5$"):
        ITransformerDiffusion.load(path, map_location=5)
    with pytest.raises(ValueError, match=r"^map_location: expected a device such as .*'meta'$"):
        ITransformerDiffusion.load(path, map_location="meta")
    back = ITransformerDiffusion.load(path, map_location=torch.device("cpu"))
    assert next(back.parameters()).device.type == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_named(tmp_path):
    model = tiny_model()
    path = model.save(tmp_path / "model.pt")
    with pytest.raises(
        ValueError,
        match=r"^map_location: expected a device this machine has, got 'cuda' \(this torch .* "
        r"sees no CUDA device\)$",
    ):
        ITransformerDiffusion.load(path, map_location="cuda")
    x = torch.zeros(2, TINY.lookback, TINY.n_variates)
    marks = torch.zeros(2, TINY.lookback, TINY.n_time_features)
    with pytest.raises(
        ValueError, match=r"^device: expected a device this machine has, got 'cuda:1"
    ):
        model.forecast(x, 2, time_features=marks, num_steps=2, device="cuda:1", progress=False)


def test_forecast_names_its_own_device_and_window_ids():
    """issue 20: window_ids of the wrong length were reported as the internal cond_ids."""
    model = tiny_model()
    x = torch.zeros(2, TINY.lookback, TINY.n_variates)
    marks = torch.zeros(2, TINY.lookback, TINY.n_time_features)
    kw = dict(time_features=marks, num_steps=2, progress=False)
    with pytest.raises(
        ValueError,
        match=r"^window_ids: expected \[2\] integer ids, one per history window \(history holds "
        r"B = 2\), got a torch\.int64 tensor of shape \(3,\)$",
    ):
        model.forecast(x, 2, window_ids=[0, 1, 2], **kw)
    with pytest.raises(TypeError, match=r"^window_ids: expected \[2\] integer ids.*float32"):
        model.forecast(x, 2, window_ids=torch.tensor([0.0, 1.0]), **kw)
    with pytest.raises(TypeError, match=r"^window_ids: expected a tensor or sequence of \[2\]"):
        model.forecast(x, 2, window_ids="01", **kw)
    with pytest.raises(ValueError, match=r"^device: expected a device such as 'cpu'.*'bogus'$"):
        model.forecast(x, 2, device="bogus", **kw)
    same = model.forecast(x, 2, device="cpu", window_ids=torch.tensor([4, 5]), **kw)
    assert same.samples.shape == (2, 2, TINY.horizon, TINY.n_variates)


def test_a_real_checkpoint_still_loads(tmp_path: Path):
    model = tiny_model(denoiser="unet")
    back = ITransformerDiffusion.load(model.save(tmp_path / "m.pt"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
