"""Phase E model: the forward model matches phase C, the overlap canvas, the Poisson loss, both networks
(the published PtychoPINN's shape, BP-UNet's back-projection), learning, the validation block."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fly64study import physics
from fly64study.overlap import cover_positions
from fly64study.bp_unet import BackprojectionUNet
from fly64study.model import ModelConfig, Placement, canvas_length, fft_length, poisson_nll
from fly64study.networks import Autoencoder, build_network, network_config
from fly64study.simulate import extract_patches, generate_dose
from fly64study.grouped import _INFER_BATCH, counts_of, inference_chunks, make_groups
from fly64study.train import batch_loss, reconstruct_patches, train_model


@pytest.fixture(scope="module")
def tiny_split(tiny):
    train, _ = generate_dose(tiny.design, tiny.generate, "1e5")
    return train


def _model(ds, gridsize=1, width=4, depth=2, stride=1, skips="concat"):
    """A BP-UNet training model."""
    cfg = ModelConfig(N=ds.N, gridsize=gridsize, intensity_scale=ds.metadata["intensity_scale"], network="bp_unet",
                      settings={"width": width, "depth": depth, "stride": stride, "skips": skips})
    torch.manual_seed(0)
    return Autoencoder(cfg, torch.from_numpy(ds.probeGuess))


def _published(ds, gridsize=2, scale=0.25):
    """A published-PtychoPINN training model."""
    cfg = network_config(ds.N, gridsize, ds.metadata["intensity_scale"], "ptychopinn", {"n_filters_scale": scale})
    torch.manual_seed(0)
    return Autoencoder(cfg, torch.from_numpy(ds.probeGuess))


def test_forward_model_reproduces_the_simulation(tiny_split):
    """Through the model's probe and physics, the true patches give the simulator's expected counts."""
    ds = tiny_split
    model = _model(ds)
    s = ds.metadata["intensity_scale"]
    predicted = physics.diffraction_amplitude(torch.from_numpy(ds.Y), model.net.probe).numpy()
    expected = s**2 * np.abs(np.fft.fftshift(np.fft.fft2(ds.Y.astype(np.complex128) * ds.probeGuess, norm="ortho"),
                                             axes=(-2, -1))) ** 2
    np.testing.assert_allclose((s * predicted.astype(np.float64)) ** 2, expected, rtol=2e-5, atol=2e-5 * expected.max())
    # and the measured counts scatter about it as Poisson: the truth has the lowest NLL among these
    counts = counts_of(ds)
    truth = poisson_nll(torch.from_numpy(predicted), counts, s)
    flat = poisson_nll(physics.diffraction_amplitude(torch.ones_like(torch.from_numpy(ds.Y)), model.net.probe), counts, s)
    assert float(truth) < float(flat)


def test_four_shifted_copies_reassemble_the_object():
    N = 32
    M = 96
    yy, xx = np.mgrid[0:M, 0:M]
    obj = np.exp(1j * (0.7 * np.sin(2 * np.pi * xx / 24) + 0.4 * np.cos(2 * np.pi * yy / 19))).astype(np.complex64)
    offsets = np.array([[-3.2, -2.5], [4.1, -1.7], [-2.6, 3.9], [1.7, 0.3]])
    offsets -= offsets.mean(axis=0)
    patches = extract_patches(obj, 48.3 + offsets[:, 0], 47.6 + offsets[:, 1], N)
    off = torch.from_numpy(offsets).float()[None]
    weight = torch.from_numpy(np.abs(physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=3.0)) ** 2).float()
    weight /= weight.max()
    # the canvas holds the object itself where the patches cover it
    flat = Placement(off, torch.ones(N, N))
    L = flat.L
    values, weights = flat.to_canvas(torch.from_numpy(patches)[None])
    canvas = (values / weights.real.clamp_min(1e-3))[0].numpy()
    m = (L - N) // 2
    truth = extract_patches(obj, np.array([48.3 - N / 2 - m + L / 2]), np.array([47.6 - N / 2 - m + L / 2]), L)[0]
    np.testing.assert_allclose(canvas[14:-14, 14:-14], truth[14:-14, 14:-14], atol=0.02)
    # averaging consistent patches changes nothing where the probe shines
    avg = Placement(off, weight).average(torch.from_numpy(patches)[None])[0].numpy()
    assert np.abs(avg - patches)[:, weight.numpy() > 0.05].max() < 5e-3


def test_poisson_nll_gradient():
    torch.manual_seed(0)
    amp = (torch.rand(2, 1, 6, 6, dtype=torch.float64) + 0.1).requires_grad_()
    counts = torch.poisson(torch.full((2, 1, 6, 6), 5.0, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a: poisson_nll(a, counts, 3.0), (amp,))
    # the NLL is smallest when the predicted counts equal the counts
    target = torch.sqrt(counts.clamp_min(1e-3)) / 3.0
    best = poisson_nll(target, counts, 3.0)
    for factor in (0.8, 1.25):
        assert poisson_nll(target * factor, counts, 3.0) > best


def test_network_output_is_a_bounded_transmission(tiny_split):
    ds = tiny_split
    for gridsize in (1, 2):
        net = _model(ds, gridsize=gridsize).net
        groups = make_groups(ds.xcoords, ds.ycoords, gridsize=gridsize, neighbor_count=7, seed=123)
        with torch.no_grad():
            out = net(torch.from_numpy(ds.diffraction)[groups.indices[:3]], groups.offsets[:3])
        C = gridsize * gridsize
        assert out.shape == (3, C, ds.N, ds.N) and out.dtype == torch.complex64
        assert bool(torch.isfinite(out).all())
        if gridsize == 1:  # sigmoid amplitude: a passive specimen
            assert float(out.abs().max()) < 1.0 and float(out.abs().min()) > 0.0
        else:  # a weighted average of such patches (Fourier shifts ring slightly where the probe is dark)
            shine = net.weight > 0.05
            assert float(out.abs()[..., shine].max()) < 1.01


@pytest.mark.parametrize("network,gridsize,thinning", [("bp_unet", 1, 0.0), ("bp_unet", 2, 0.0), ("bp_unet", 2, 0.5),
                                                       ("ptychopinn", 1, 0.5), ("ptychopinn", 2, 0.5)])
def test_training_steps_lower_the_loss(tiny_split, network, gridsize, thinning):
    ds = tiny_split
    model = _model(ds, gridsize=gridsize, width=8) if network == "bp_unet" else _published(ds, gridsize)
    groups = make_groups(ds.xcoords, ds.ycoords, gridsize=gridsize, neighbor_count=7, seed=123)
    idx, off = groups.indices[:16], groups.offsets[:16]
    amp, counts = torch.from_numpy(ds.diffraction)[idx], counts_of(ds)[idx]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_now():
        with torch.no_grad():
            return float(batch_loss(model, amp, counts, off, thinning, torch.Generator().manual_seed(5)))

    before = loss_now()
    for _ in range(5):
        loss = batch_loss(model, amp, counts, off, thinning, torch.Generator().manual_seed(5))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < before


def test_backprojection_of_noiseless_data_follows_the_object(tiny_split):
    """The network's physics input already carries the object's phase (before any training)."""
    ds = tiny_split
    net = _model(ds).net
    clean = physics.diffraction_amplitude(torch.from_numpy(ds.Y), net.probe)
    o0 = net.backproject(clean).numpy()
    w = np.abs(ds.probeGuess) ** 2
    from fly64study.metrics import weighted_phase_rmse
    assert weighted_phase_rmse(o0, ds.Y, w) < weighted_phase_rmse(np.ones_like(ds.Y), ds.Y, w)


def test_depth_must_divide_N():
    with pytest.raises(ValueError, match="train.bp_unet.depth"):
        BackprojectionUNet(ModelConfig(N=24, gridsize=1, intensity_scale=1.0, network="bp_unet",
                                       settings={"width": 4, "depth": 4, "stride": 1, "skips": "concat"}),
                           torch.ones(24, 24, dtype=torch.complex64))


@pytest.mark.parametrize("stride,skips", [(1, "concat"), (2, "add"), (2, "concat"), (4, "add")])
def test_every_network_shape_gives_full_size_patches_and_starts_from_the_backprojection(tiny_split, stride, skips):
    ds = tiny_split
    net = _model(ds, gridsize=2, width=4, depth=2, stride=stride, skips=skips).net
    groups = make_groups(ds.xcoords, ds.ycoords, gridsize=2, neighbor_count=7, seed=123)
    amp, off = torch.from_numpy(ds.diffraction)[groups.indices[:2]], groups.offsets[:2]
    with torch.no_grad():
        out = net(amp, off)
        start = _model(ds, gridsize=2, width=4, depth=2).net(amp, off)  # the head is zero: the same start
    assert out.shape == (2, 4, ds.N, ds.N)
    torch.testing.assert_close(out, start, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="train.bp_unet.depth"):
        _model(ds, depth=4, stride=4)  # N = 32 is not divisible by 4 * 2**4


def test_a_plateau_halves_the_learning_rate_then_stops_training(tiny_split, tiny):
    """With steps too small to move the validation loss, the rate halves after each epoch without a
    better loss (train.lr_patience = 1) and training stops after train.patience = 2 of them."""
    import dataclasses

    cfg = dataclasses.replace(tiny.train, epochs=20, patience=2, lr_patience=1, learning_rate=1e-9)
    result = train_model(tiny_split, gridsize=1, cfg=cfg, seed=7, neighbor_count=7, grouping_seed=123,
                         device=torch.device("cpu"))
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.best_epoch == 1
    assert [h["lr"] for h in result.history] == [1e-9, 1e-9, 5e-10]
    # a rate that learns is not cut while the validation loss falls
    cfg = dataclasses.replace(cfg, epochs=3, patience=3, learning_rate=3e-4)
    learning = train_model(tiny_split, gridsize=1, cfg=cfg, seed=7, neighbor_count=7, grouping_seed=123,
                           device=torch.device("cpu"))
    losses = [h["val_loss"] for h in learning.history]
    assert losses == sorted(losses, reverse=True) and {h["lr"] for h in learning.history} == {3e-4}


def test_inference_keeps_every_member_of_a_covering_group(tiny_split):
    ds = tiny_split
    net = _model(ds, gridsize=2).net.eval()
    patches = reconstruct_patches(net, ds, neighbor_count=7, grouping_seed=123)
    groups, keep = cover_positions(ds.xcoords, ds.ycoords, gridsize=2, neighbor_count=7, seed=123)
    offsets = torch.from_numpy(groups.offsets).float()
    extent = offsets.abs().flatten(1).amax(dim=1)
    # the tiny split's groups need more than one canvas, which chunks taken in order would mix
    assert canvas_length(ds.N, float(extent.max())) != canvas_length(ds.N, float(extent.min()))
    chunks = inference_chunks(offsets, ds.N)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(groups.indices)))  # each group once
    lengths = [{canvas_length(ds.N, float(offsets[g].abs().max())) for g in chunk.tolist()} for chunk in chunks]
    assert all(len(one) == 1 for one in lengths) and max(map(len, chunks)) <= _INFER_BATCH
    # a group's patches do not depend on the groups that share its chunk: the widest and the
    # narrowest group, each alone, give the kept patches up to the batch size's rounding (which
    # the untrained network's phase wrap amplifies at a few pixels). Computed beside the widest
    # group, on its canvas, the narrowest one's differed by a median 0.02.
    for g in (int(extent.argmax()), int(extent.argmin())):
        with torch.no_grad():
            alone = net(torch.from_numpy(ds.diffraction)[groups.indices[g:g + 1]], offsets[g:g + 1])[0].numpy()
        gap = np.abs(patches[groups.indices[g][keep[g]]] - alone[keep[g]])
        assert np.median(gap) < 1e-5 and np.mean(gap > 1e-4) < 0.02, (g, np.median(gap), np.mean(gap > 1e-4))
    assert np.isfinite(patches).all() and len(groups.indices) < 0.5 * ds.n  # about n / 4 groups, not n


def test_fft_lengths_are_the_smallest_with_factors_2_3_5():
    smooth = sorted(2**a * 3**b * 5**c for a in range(9) for b in range(6) for c in range(4))
    for n in range(1, 300):
        assert fft_length(n) == min(s for s in smooth if s >= n), n
    assert (fft_length(86), fft_length(106), fft_length(111), fft_length(388)) == (90, 108, 120, 400)
    with pytest.raises(ValueError, match="at least 1"):
        fft_length(0)
    for N, extent in ((64, 0.0), (64, 7.3), (16, 0.6), (128, 89.0)):
        assert canvas_length(N, extent) - N >= 2 * math.ceil(extent) + 8


@pytest.mark.parametrize("spread", [4.0, 0.9])  # canvases of 32 (even margin) and 27 (odd, ⌊(L - N)/2⌋)
def test_placement_equals_shifting_each_patch_onto_a_canvas_and_back(spread):
    """The Fourier-space shortcut against the plain construction (pad, shift each weighted patch to
    its place, sum on the canvas, shift the sums back, divide), in float64."""
    rng = np.random.default_rng(1)
    N, B, C = 16, 2, 4
    patches = torch.from_numpy(rng.normal(size=(B, C, N, N)) + 1j * rng.normal(size=(B, C, N, N)))
    offsets = torch.from_numpy(rng.uniform(-spread, spread, (B, C, 2)))
    weight = torch.from_numpy(rng.uniform(0, 1, (N, N)))
    p = Placement(offsets, weight)
    L, m = p.L, p.m
    assert L == (32 if spread > 1 else 27)
    k = np.fft.fftfreq(L)

    def shift(x, d):  # move content by d = (dx, dy) pixels
        ramp = np.exp(-2j * np.pi * (k[None, :] * d[0] + k[:, None] * d[1]))
        return np.fft.ifft2(np.fft.fft2(x) * ramp)

    def pad(x):
        return np.pad(x, ((m, L - N - m), (m, L - N - m)))

    x, w, off = patches.numpy(), weight.numpy(), offsets.numpy()
    expected = np.empty_like(x)
    for b in range(B):
        values = sum(shift(pad(x[b, c] * w), off[b, c]) for c in range(C))
        weights = sum(shift(pad(w), off[b, c]) for c in range(C))
        for c in range(C):
            num = shift(values, -off[b, c])[m:m + N, m:m + N] + 0.01 * x[b, c]
            den = shift(weights, -off[b, c])[m:m + N, m:m + N].real + 0.01
            expected[b, c] = num / den
    np.testing.assert_allclose(p.average(patches).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_a_batch_that_does_not_split_over_the_world_is_refused_before_training(tiny_split, tiny):
    """Under torchrun each of K processes takes batch_size / K groups a step: a batch size K does
    not divide is a params error naming the field and the fix (checked before any collective)."""
    from fly64study.design import ParamsError
    from fly64study.distributed import World

    with pytest.raises(ParamsError, match=r"train.batch_size: 8 groups do not split over 3 processes"):
        train_model(tiny_split, gridsize=1, cfg=tiny.train, seed=7, neighbor_count=7, grouping_seed=123,
                    device=torch.device("cpu"), world=World(size=3, rank=1))


# ------------------------------------------------------------------ the published network's shape
@pytest.mark.parametrize("scale,parameters", [(2, 2_340_208), (1, 589_360)])
def test_the_published_network_has_its_published_shape(scale, parameters):
    """At N = 64, gridsize 2: the group's C = 4 amplitudes are the C input channels of one encoder of
    Conv-Conv-MaxPool blocks s·(32, 64, 128) wide, two decoders s·(64, 32) end at N/2 with C-channel
    heads for the central N/2 × N/2 (sigmoid amplitude, π·tanh phase) and a border branch: 2.34 M
    parameters at the published n_filters_scale s = 2 (Hoidn et al. 2023), 0.59 M at s = 1."""
    N, C = 64, 4
    net = build_network(network_config(N, 2, 3.0, "ptychopinn", {"n_filters_scale": scale}),
                        torch.ones(N, N, dtype=torch.complex64))
    assert sum(p.numel() for p in net.parameters()) == parameters
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == C and [c.out_channels for c in convs[1::2]] == [32 * scale, 64 * scale, 128 * scale]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in net.modules())
    heads = {}
    for name in ("amplitude", "phase"):
        decoder = getattr(net, name)
        ups = [m for m in decoder.base.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in ups[1::2]] == [64 * scale, 32 * scale]
        assert decoder.central.out_channels == C and decoder.border[-1].out_channels == C
        decoder.central.register_forward_hook(lambda m, i, o, name=name: heads.__setitem__(name, o))
    amplitudes = torch.rand(3, C, N, N)
    with torch.no_grad():
        patches = net(amplitudes, torch.randn(3, C, 2) * 4)
    assert patches.shape == (3, C, N, N) and patches.dtype == torch.complex64
    assert heads["amplitude"].shape == heads["phase"].shape == (3, C, N // 2, N // 2)  # the central N/2 heads


def test_the_published_network_reads_the_whole_detector_and_bp_unet_the_probe_pupil_only(tiny_split):
    """Counts outside the probe's far-field pupil (the dark field, where the finest detail scatters)
    change the published network's output; BP-UNet keeps only the pupil (|P^| > 5 % of its max)."""
    ds = tiny_split
    far = torch.fft.fftshift(torch.fft.fft2(torch.from_numpy(ds.probeGuess)).abs())
    dark = far < 0.05 * far.max()
    assert 0 < dark.float().mean() < 1
    groups = make_groups(ds.xcoords, ds.ycoords, gridsize=2, neighbor_count=7, seed=123)
    amp, off = torch.from_numpy(ds.diffraction)[groups.indices[:4]], groups.offsets[:4]
    brighter = amp + 0.5 * dark  # more counts in the dark field only
    for model, reads_dark in ((_published(ds), True), (_model(ds, gridsize=2), False)):
        net = model.net.eval()
        with torch.no_grad():
            change = (net(brighter, off) - net(amp, off)).abs().max()
        assert (change > 1e-4) == reads_dark, (type(net).__name__, float(change))


def test_the_validation_block_groups_are_as_tight_as_the_training_groups():
    """Held out as a compact block, the validation groups' members are as far apart as training's
    (within 20 %) in a dense and a sparse view of a default-profile scan; held out at random (the
    split before 2026-12-07) they were about three times as far."""
    from fly64study.overlap import block_split, group_positions, member_distances, select_view

    rng = np.random.default_rng(42)
    x, y = rng.uniform(32, 352, 1000), rng.uniform(32, 192, 1000)  # a training half of the default scan
    for spacing in (0.3 * 24.2, 0.8 * 24.2):  # dense, sparse: (1 - f) · D90
        kept = select_view(x, y, spacing, seed=456)
        vx, vy = x[kept], y[kept]
        for seed in (7, 8, 9):
            train, val = block_split(vx, vy, 0.1, seed)
            distance = {}
            for name, pos in (("train", train), ("validation", val)):
                g = group_positions(vx[pos], vy[pos], gridsize=2, neighbor_count=7, seed=123)
                distance[name] = member_distances(g.offsets)["mean_member_distance_px"]
            assert abs(distance["validation"] / distance["train"] - 1) < 0.2, (spacing, seed, distance)
        scattered = rng.permutation(len(kept))[:len(val)]
        g = group_positions(vx[scattered], vy[scattered], gridsize=2, neighbor_count=7, seed=123)
        assert member_distances(g.offsets)["mean_member_distance_px"] > 1.5 * distance["train"]


def test_training_records_both_groups_geometry(tiny_split, tiny):
    import dataclasses

    cfg = dataclasses.replace(tiny.train, epochs=1)
    result = train_model(tiny_split, gridsize=2, cfg=cfg, seed=7, neighbor_count=7, grouping_seed=123,
                         device=torch.device("cpu"))
    train, val = result.geometry["train"], result.geometry["validation"]
    assert train["groups"] > val["groups"] > 0
    assert abs(val["mean_member_distance_px"] / train["mean_member_distance_px"] - 1) < 0.2, result.geometry


def test_every_group_reassembly_keeps_every_member_of_a_group_at_every_position(tiny_split):
    """Upstream's reassembly (compare.stitching: every_group): a group seeded at every position, as
    training forms them, and every member's patch kept: C patches per position on average, each
    position covered, each patch its group's inference."""
    from fly64study.overlap import group_positions
    from fly64study.train import every_group_patches

    ds = tiny_split
    net = _published(ds).net.eval()
    patches, where = every_group_patches(net, ds, neighbor_count=7, grouping_seed=123)
    groups = group_positions(ds.xcoords, ds.ycoords, gridsize=2, neighbor_count=7, seed=123)
    assert patches.shape == (4 * ds.n, ds.N, ds.N) and np.array_equal(where, groups.indices.reshape(-1))
    assert set(where.tolist()) == set(range(ds.n))
    with torch.no_grad():
        first = net(torch.from_numpy(ds.diffraction)[groups.indices[:1]], torch.from_numpy(
            groups.offsets[:1].astype(np.float32))).numpy()[0]
    np.testing.assert_allclose(patches[:4], first, atol=1e-5)
