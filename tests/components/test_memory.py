"""The patch memory: its random sample, nearest-neighbour distances, and its calibrated addition to the scorer."""

import pytest
import torch

from anomalib_dhkd.components.scoring import DiscrepancyScorer, PatchMemory, ScoringConfig, ScoringInput, local_patches
from tests.components.test_scoring import CHANNELS, LAYERS, MAP_LAYERS, RANDOM_ENCODER_SCORING, STRIDES, scoring_input

MEMORY_LAYERS = ("blocks.2", "blocks.4")


def memory_scorer(**settings: object) -> DiscrepancyScorer:
    """A three-layer tiny scorer with a patch memory of ``blocks.2`` and ``blocks.4``; ``settings`` override."""
    config = ScoringConfig(**{**RANDOM_ENCODER_SCORING, "memory_layers": MEMORY_LAYERS, **settings})
    return DiscrepancyScorer(LAYERS[:3], CHANNELS[:3], STRIDES[:3], MAP_LAYERS, config)


def with_features(inputs: ScoringInput) -> ScoringInput:
    """The inputs with encoder features: the teacher features plus a little noise."""
    return inputs._replace(features=[t + 0.1 * torch.randn_like(t) for t in inputs.teacher])


def rows(patches: torch.Tensor) -> torch.Tensor:
    """Patch features ``(N, C, h, w)`` as rows ``(N h w, C)``."""
    return patches.permute(0, 2, 3, 1).flatten(end_dim=2)


def test_local_patches_average_each_neighbourhood_and_meet_at_the_finest_size() -> None:
    fine, coarse = torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 4, 4)
    fine[0, :, 3, 3] = 9.0
    patches = local_patches([fine, coarse])
    assert patches.shape == (1, 5, 8, 8)
    assert patches[0, 0, 2:5, 2:5].eq(1.0).all()  # 9 spread over each 3 x 3 neighbourhood that holds it
    assert patches[0, 0].sum() == 9.0
    assert patches[0, 2:].eq(0).all()


def test_patch_memory_keeps_a_seeded_uniform_sample_of_distinct_patches() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(3, 4, 5, 5) for _ in range(4)]  # 300 patches
    memory = PatchMemory(size=120, seed=7)
    memory.fit(batches)
    every_patch = torch.cat([rows(b) for b in batches])
    assert memory.bank.shape == (120, 4)
    assert (memory.bank[:, None] == every_patch[None]).all(dim=-1).any(dim=1).all()  # each row a given patch
    assert torch.unique(memory.bank, dim=0).shape[0] == 120
    from_first_batch = (memory.bank[:, None] == rows(batches[0])[None]).all(dim=-1).any(dim=1).sum()
    assert 10 < from_first_batch < 50  # a quarter of the patches, about a quarter of the sample: not the first ones
    again = PatchMemory(size=120, seed=7)
    again.fit(batches)
    assert torch.equal(again.bank, memory.bank)
    other_seed = PatchMemory(size=120, seed=8)
    other_seed.fit(batches)
    assert not torch.equal(other_seed.bank, memory.bank)
    small = PatchMemory(size=1000)
    small.fit(batches)
    assert small.bank.shape == (300, 4)  # fewer patches than the size: all of them


def test_patch_memory_distance_is_the_nearest_neighbours() -> None:
    torch.manual_seed(0)
    memory = PatchMemory(size=64)
    queries = torch.randn(2, 6, 3, 3)
    assert memory(queries).eq(0).all()  # empty until fitted
    memory.fit([torch.randn(4, 6, 4, 4)])
    expected = torch.cdist(rows(queries), memory.bank).amin(dim=1).view(2, 3, 3)
    torch.testing.assert_close(memory(queries)[:, 0], expected, atol=1e-4, rtol=1e-4)
    member = memory.bank[5].view(1, 6, 1, 1)
    assert memory(member).item() < 1e-3


def test_patch_memory_refuses_an_empty_fit_and_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least one patch"):
        PatchMemory(size=0)
    with pytest.raises(ValueError, match="empty"):
        PatchMemory(size=4).fit([])


def test_scorer_memory_holds_out_every_fifth_image_and_marks_unseen_patches() -> None:
    torch.manual_seed(0)
    batches = [with_features(scoring_input(4)) for _ in range(3)]  # images 4 and 9 are held out
    scorer = memory_scorer()
    scorer.fit(lambda: batches)
    bank = scorer.memory_map.memory.bank
    patches = [local_patches([b.features[1], b.features[2]]) for b in batches]
    images = torch.cat(patches)
    in_bank = [(rows(image[None])[:, None] == bank[None]).all(dim=-1).any() for image in images]
    assert [i for i, found in enumerate(in_bank) if not found] == [4, 9]
    assert scorer.memory_map.scale > 0
    assert scorer.memory_map.score_std > 0

    plain = memory_scorer(memory_layers=())
    plain.fit(lambda: batches)
    test = with_features(scoring_input(2))
    test.features[1][1, :, 4, 4] += 25.0  # a feature never seen, only in the encoder features of image 1
    with_memory, without = scorer(test), plain(test)
    difference = with_memory.anomaly_map - without.anomaly_map
    assert difference[1].max() > 2 * difference[0].max()  # the memory's distances add to every map
    peak = divmod(int(difference[1, 0].argmax()), difference.shape[-1])
    centre = 4 * STRIDES[1] + STRIDES[1] // 2
    assert abs(peak[0] - centre) <= STRIDES[1]
    assert abs(peak[1] - centre) <= STRIDES[1]
    assert with_memory.pred_score[1] - without.pred_score[1] > with_memory.pred_score[0] - without.pred_score[0]


def test_scorer_memory_round_trips_through_a_state_dict() -> None:
    torch.manual_seed(0)
    batches = [with_features(scoring_input(10))]
    scorer = memory_scorer(memory_size=50)
    scorer.fit(lambda: batches)
    loaded = memory_scorer(memory_size=50)
    loaded.load_state_dict(scorer.state_dict())  # the memory's bank takes the saved shape
    test = with_features(scoring_input(2))
    torch.testing.assert_close(loaded(test).anomaly_map, scorer(test).anomaly_map)
    torch.testing.assert_close(loaded(test).pred_score, scorer(test).pred_score)


def test_scorer_memory_needs_encoder_features_known_layers_and_two_held_out_images() -> None:
    with pytest.raises(ValueError, match="memory_layers"):
        memory_scorer(memory_layers=("blocks.9",))
    with pytest.raises(ValueError, match="memory_weight must be positive"):
        memory_scorer(memory_weight=0.0)
    scorer = memory_scorer()
    with pytest.raises(ValueError, match="encoder's features"):
        scorer.fit(lambda: [scoring_input(6)])
    with pytest.raises(ValueError, match="Patch memory statistics need at least two normal images, got 1"):
        scorer.fit(lambda: [with_features(scoring_input(6))])  # only the fifth image is held out


def test_memory_map_scale_matches_the_local_maps_spread_on_held_out_images() -> None:
    torch.manual_seed(0)
    batches = [with_features(scoring_input(10))]
    scorer = memory_scorer(memory_weight=2.0)
    scorer.fit(lambda: batches)
    held_out = ScoringInput(
        [t[[4, 9]] for t in batches[0].teacher],
        [s[[4, 9]] for s in batches[0].student],
        batches[0].image_size,
        [f[[4, 9]] for f in batches[0].features],
    )
    plain = memory_scorer(memory_layers=())
    plain.fit(lambda: batches)
    local = plain(held_out).anomaly_map
    distances = scorer.memory_map.distances([held_out.features[1], held_out.features[2]])
    smoothed = scorer.map_fusion.smooth([distances], image_size=held_out.image_size)
    expected = 2.0 * local.std() / smoothed.std()
    torch.testing.assert_close(scorer.memory_map.scale, expected.to(scorer.memory_map.scale), rtol=1e-4, atol=0)
