"""SamplingConfig: the one sampling record of forecast(), evaluate_split, the calibration and the
command (its checks, its forms for sample_many and for results.json), resolve_sampling (loose
keywords beside a config), and Scoring, which holds one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny import TINY

from diffsample import SAMPLERS, sample_ddim
from diffsample.forecast import (
    ITransformerDiffusion,
    SamplingConfig,
    TrainConfig,
    load_dataset,
    sampling_config,
)
from diffsample.forecast.calibration import (
    CALIBRATION_SAMPLING,
    calibration_sampling,
    fit_spread_scale,
)
from diffsample.forecast.run import Scoring
from diffsample.forecast.sampling_config import resolve_sampling
from diffsample.prediction import DynamicThreshold

SOURCE = "synthetic(n_steps=1500, n_variates=3, seed=0)"


def test_the_defaults_are_the_librarys_sampling_defaults():
    # the values forecast(), evaluate_split and the command used before there was a config
    s = SamplingConfig()
    assert dataclasses.asdict(s) == {
        "n_samples": 100,
        "num_steps": 10,
        "sampler": "dpmpp_2m",
        "spacing": "logsnr",
        "seed": 0,
        "eta": None,
        "clip_x0": None,
        "clip_eps": None,
        "autocast": "off",
        "graph": False,
        "max_batch": None,
        "memory_budget": None,
    }
    # sample_many's own defaults, and no sampler option the sampler has not been given
    assert s.sample_many_kwargs() == {
        "seed": 0,
        "max_batch": None,
        "memory_budget": None,
        "autocast": None,
        "graph": False,
    }


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"n_samples": 0}, ValueError, r"^n_samples: expected a positive integer, got int 0$"),
        ({"num_steps": 2.0}, TypeError, r"^num_steps: expected a positive integer, got float"),
        ({"sampler": "euler"}, ValueError, r"^sampler: expected one of 'ddpm', 'ddim'"),
        ({"sampler": 3}, TypeError, r"^sampler: expected a name in SAMPLERS or a sampler func"),
        ({"spacing": "cosine"}, ValueError, r"^spacing: expected one of 'trailing'"),
        ({"seed": 1.5}, TypeError, r"^seed: expected an int or a tuple of ints \(a noise key\)"),
        ({"seed": ()}, ValueError, r"^seed: expected a tuple of 1\.\.64 ints"),
        ({"seed": True}, TypeError, r"^seed: expected an integer, got bool True$"),
        ({"eta": -0.1}, ValueError, r"^eta: expected a finite number >= 0, got float -0\.1$"),
        (
            {"eta": 0.5},
            ValueError,
            r"^eta: expected None with sampler 'dpmpp_2m' \(which has no eta; ddim has\), got 0\.5$",
        ),
        ({"clip_x0": 0.0}, ValueError, r"^clip_x0: expected a finite number > 0, got float 0\.0$"),
        ({"clip_eps": "both"}, ValueError, r"^clip_eps: expected one of 'raw', 'rederive'"),
        (
            {"sampler": "ddim", "clip_x0": 1.0},
            ValueError,
            r"^clip_eps: expected 'raw' or 'rederive' with clip_x0 set, got None",
        ),
        ({"autocast": "fp32"}, ValueError, r"^autocast: expected one of 'off', 'bf16', 'fp16'"),
        ({"autocast": torch.bfloat16}, TypeError, r"^autocast: expected one of 'off'"),
        ({"graph": 1}, TypeError, r"^graph: expected True or False, got int 1$"),
        ({"max_batch": 0}, ValueError, r"^max_batch: expected a positive integer, got int 0$"),
        (
            {"memory_budget": 1.5},
            ValueError,
            r"^memory_budget: expected a finite number in \(0, 1\], got float 1\.5 \(bytes as an "
            r"int, or a fraction of free memory as a float\)$",
        ),
        ({"memory_budget": "1G"}, TypeError, r"^memory_budget: expected a finite number in"),
    ],
)
def test_every_field_is_checked_when_built(change, error, message):
    with pytest.raises(error, match=message):
        SamplingConfig(**change)


def test_values_are_normalised_and_the_record_is_frozen():
    s = SamplingConfig(
        n_samples=np.int64(8),
        num_steps=np.int32(3),
        seed=[np.int64(1), -2],
        eta=None,
        clip_x0=np.float32(2.0),
        max_batch=np.int16(64),
        memory_budget=np.int64(2**20),
    )
    assert (s.n_samples, s.num_steps, s.seed, s.clip_x0, s.max_batch) == (8, 3, (1, -2), 2.0, 64)
    assert [type(v) for v in (s.n_samples, s.num_steps, s.clip_x0, s.max_batch)] == [
        int,
        int,
        float,
        int,
    ]
    assert type(s.memory_budget) is int and isinstance(s.seed, tuple)
    assert type(SamplingConfig(memory_budget=0.25).memory_budget) is float  # a share, not bytes
    assert s == SamplingConfig(n_samples=8, num_steps=3, seed=(1, -2), clip_x0=2.0,
                               max_batch=64, memory_budget=2**20)  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_samples = 2  # type: ignore[misc]


def test_sampler_options_go_only_where_the_sampler_takes_them():
    ddim = SamplingConfig(sampler="ddim", eta=0.5, clip_x0=3.0, clip_eps="raw", autocast="bf16")
    kw = ddim.sample_many_kwargs()
    assert (kw["eta"], kw["clip_x0"], kw["clip_eps"], kw["autocast"]) == (
        0.5,
        3.0,
        "raw",
        torch.bfloat16,
    )
    assert SamplingConfig(autocast="fp16").autocast_dtype is torch.float16
    assert "clip_eps" not in SamplingConfig(clip_x0=1.0).sample_many_kwargs()  # DPM: x0 only
    assert SamplingConfig(sampler=sample_ddim, eta=1.0).eta == 1.0  # a function: its signature

    def any_options(denoiser, x, schedule, timesteps, **kwargs):
        return x

    assert SamplingConfig(sampler=any_options, eta=0.3).eta == 0.3  # **kwargs takes anything

    def no_eta(denoiser, x, schedule, timesteps, *, cond=None):
        return x

    with pytest.raises(ValueError, match=r"^eta: expected None with sampler <function"):
        SamplingConfig(sampler=no_eta, eta=0.3)
    assert SamplingConfig(sampler=sample_ddim).sampler_name == "sample_ddim"
    assert SamplingConfig(sampler="ddpm").sampler_name == "ddpm"


def test_the_json_record_is_asdict_with_the_sampler_by_name():
    s = SamplingConfig(
        sampler=sample_ddim, seed=(3, 1), clip_x0=DynamicThreshold(0.9, 2.0), clip_eps="rederive"
    )
    record = s.as_dict()
    assert record == {**dataclasses.asdict(s), "sampler": "sample_ddim"}
    assert record["clip_x0"] == {"ratio": 0.9, "max_value": 2.0}
    assert json.loads(json.dumps(record))["seed"] == [3, 1]
    assert SamplingConfig().as_dict()["sampler"] == "dpmpp_2m"


def test_resolve_sampling_folds_loose_keywords_and_refuses_a_contradiction():
    assert resolve_sampling(None) == SamplingConfig()
    assert resolve_sampling(None, num_steps=4, seed=None) == SamplingConfig(num_steps=4)
    base = SamplingConfig(n_samples=16)
    assert resolve_sampling(None, default=base, num_steps=4) == SamplingConfig(16, 4)
    given = SamplingConfig(n_samples=8, sampler="ddim", autocast="bf16")
    # a loose keyword may repeat the config's value (in any of its accepted forms)
    same = resolve_sampling(given, n_samples=np.int64(8), sampler="ddim", autocast=torch.bfloat16)
    assert same is given
    with pytest.raises(
        ValueError,
        match=r"^num_steps, sampling: expected num_steps left out or equal to "
        r"sampling\.num_steps, got num_steps=4 and sampling\.num_steps=10$",
    ):
        resolve_sampling(given, num_steps=4)
    with pytest.raises(ValueError, match=r"^autocast, sampling: .* got autocast='fp16' and "):
        resolve_sampling(given, autocast=torch.float16)
    with pytest.raises(ValueError, match=r"^graph, sampling: .*got graph=False and"):
        resolve_sampling(dataclasses.replace(given, graph=True), graph=False)
    with pytest.raises(TypeError, match=r"^sampling: expected a SamplingConfig or None, got dict"):
        resolve_sampling({"n_samples": 8})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^autocast: expected None, torch\.bfloat16"):
        resolve_sampling(None, autocast=torch.float64)
    with pytest.raises(ValueError, match=r"^n_samples: expected a positive integer"):
        resolve_sampling(given, n_samples=0)  # checked as a value first, then compared


def test_scoring_holds_a_sampling_config_and_takes_the_old_keywords():
    s = Scoring(n_samples=8, num_steps=3, sampler="ddim", spacing="trailing", seed=5, windows=4)
    assert s.sampling == SamplingConfig(8, 3, "ddim", "trailing", 5)
    assert (s.n_samples, s.num_steps, s.sampler, s.spacing, s.seed) == (8, 3, "ddim", "trailing", 5)
    assert s == Scoring(sampling=SamplingConfig(8, 3, "ddim", "trailing", 5), windows=4)
    assert Scoring().sampling == SamplingConfig() and Scoring().batch_size == 256
    moved = dataclasses.replace(s, windows=None)  # replace keeps working on the new fields
    assert (moved.sampling, moved.windows) == (s.sampling, None)
    with pytest.raises(ValueError, match=r"^num_steps, sampling: expected num_steps left out"):
        Scoring(sampling=SamplingConfig(num_steps=10), num_steps=3)
    with pytest.raises(TypeError, match=r"^seed: expected an int with baselines"):
        Scoring(seed=(1, 2))
    assert Scoring(seed=(1, 2), baselines=False).seed == (1, 2)
    with pytest.raises(ValueError, match=r"^windows: expected a positive integer, got int 0$"):
        Scoring(windows=0)
    with pytest.raises(TypeError):
        Scoring(8)  # type: ignore[misc]  # keyword-only, as every use was


def test_the_sampler_choices_are_the_registrys(monkeypatch):
    monkeypatch.setitem(SAMPLERS, "ddim_again", sample_ddim)
    assert SamplingConfig(sampler="ddim_again", eta=0.2).eta == 0.2
    assert sampling_config.EXTRA_FIELDS == ("eta", "clip_x0", "clip_eps", "autocast", "graph")


def test_the_calibration_samples_with_a_config_too():
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    for p in model.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    split = load_dataset(SOURCE, lookback=TINY.lookback, horizon=TINY.horizon).val
    kw = dict(max_windows=6, batch_size=4)
    loose = fit_spread_scale(model, split, n_samples=5, num_steps=3, sampler="ddim", seed=4, **kw)
    config = SamplingConfig(n_samples=5, num_steps=3, sampler="ddim", seed=4)
    assert torch.equal(fit_spread_scale(model, split, sampling=config, **kw), loose)
    # without a config: the defaults with 16 samples, as before
    default = fit_spread_scale(model, split, **kw)
    assert torch.equal(default, fit_spread_scale(model, split, sampling=CALIBRATION_SAMPLING, **kw))
    assert CALIBRATION_SAMPLING == SamplingConfig(n_samples=16)
    with pytest.raises(ValueError, match=r"^seed, sampling: expected seed left out or equal"):
        fit_spread_scale(model, split, sampling=config, seed=5, **kw)
    with pytest.raises(ValueError, match=r"^n_samples: expected an integer >= 2, got int 1$"):
        fit_spread_scale(model, split, sampling=dataclasses.replace(config, n_samples=1))
    # train's calibration: TrainConfig's samples, steps and seed, the rest the defaults
    tc = TrainConfig(calibration_samples=8, calibration_steps=4, seed=9)
    assert calibration_sampling(tc) == SamplingConfig(n_samples=8, num_steps=4, seed=9)
