"""The cluster layer's RL policy: environment, action decoding, training (skrl PPO on Ray workers,
checkpoints) and the shipped NumPy policy."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tcloud.cluster.service import load_table
from tcloud.cluster.workload import DEFAULT_MODELS, ClusterError, model_by_name
from tcloud.runtime.cli import main as tcloud


@pytest.fixture(scope="module")
def table():
    return load_table(build=False)


def _sim(table, policy, load=0.6, pnpus=8, models=DEFAULT_MODELS, seed=2, trace="poisson", duration=1.0):
    from tcloud.cluster.placement import Cluster
    from tcloud.cluster.simulate import Simulator, make_context
    from tcloud.cluster.workload import Arrivals, make_trace

    context = make_context(models, table, pnpus, load, interval=0.05)
    arrivals = Arrivals(make_trace(trace, models, duration, seed), context.rates, seed)
    return Simulator(context, Cluster(pnpus // 4, 4), policy, arrivals)


# --- environment, observation, action ------------------------------------------------------------

def test_the_environment_follows_the_gymnasium_api():
    from tcloud.cluster.rl_train import ClusterEnv

    env = ClusterEnv(interval=0.01, steps=2, seed=3)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info["trace"] in ("poisson", "mmpp", "diurnal", "azure")
    assert obs.shape == (6 * 15 + 3,) and env.action_space.shape == (18,)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and isinstance(reward, float) and not terminated and not truncated
    assert -2 <= reward <= 1 and 0 <= info["worst"] <= info["good"] <= 1 and 0 < info["held"] <= 1 + 1e-12  # a sum of prices: rounding
    assert reward == pytest.approx(info["good"] - (1 - info["worst"]) - 0.1 * info["held"])
    *_, truncated, _ = env.step(np.zeros(env.action_space.shape))
    assert truncated
    mixed = ClusterEnv(nodes=(2, 4), interval=0.01, steps=1, seed=0)
    assert {mixed.reset(seed=s)[1]["pnpus"] for s in range(8)} == {8, 16}
    drawn = ClusterEnv(interval=0.5, steps=1, seed=0)
    assert {drawn.reset(seed=s)[1]["trace"] for s in range(24)} == {"poisson", "mmpp", "diurnal", "azure"}


def test_a_larger_weight_gives_a_model_more_of_the_spare_engines_and_the_cluster_stays_held(table):
    """``a0`` tilts how the engines beyond the floors are shared; the rule holds the whole cluster
    (as static does) whatever the weights, so weights change the split, not the price."""
    from tcloud.cluster.rl import decode, model_options
    from tcloud.cluster.simulate import make_context

    context = make_context(DEFAULT_MODELS, table, 64, 0.4)
    options = model_options(context)
    shape = {s.label: s for s in context.shapes}
    observation = {"arrival_rate": context.rates}
    counts, used = {}, {}
    for a0 in (-1.0, 0.0, 1.0):
        action = np.zeros((6, 3))
        action[2, 0] = a0
        plan = decode(action.ravel(), observation, context, options)
        counts[a0] = [len(plan.replicas[m]) for m in range(6)]
        used[a0] = (sum(shape[l].mes for ls in plan.replicas.values() for l in ls),
                    sum(shape[l].ves for ls in plan.replicas.values() for l in ls))
    assert counts[-1.0][2] < counts[0.0][2] < counts[1.0][2]
    for a0, (mes, ves) in used.items():
        assert mes <= 4 * 64 and ves <= 2 * 64 and max(mes / (4 * 64), ves / (2 * 64)) >= 0.97, a0


def test_actions_add_remove_and_resize_vnpus_within_the_cluster_and_the_slo(table):
    from tcloud.cluster.rl import decode, efficient_shapes, model_options
    from tcloud.cluster.simulate import make_context

    # at a2 = -1 and +1, by hand: centre b_max // 2 + 1, moved by round(0.25 x (b_max - 1) / 2) batches
    expected_batch = {1: {-1: 1, 1: 1}, 2: {-1: 2, 1: 2}, 3: {-1: 2, 1: 2}, 4: {-1: 3, 1: 3},
                      5: {-1: 2, 1: 4}, 6: {-1: 3, 1: 5}, 7: {-1: 3, 1: 5}, 8: {-1: 4, 1: 6},
                      9: {-1: 4, 1: 6}, 10: {-1: 5, 1: 7}, 11: {-1: 5, 1: 7}, 12: {-1: 6, 1: 8},
                      13: {-1: 5, 1: 9}, 16: {-1: 7, 1: 11}, 32: {-1: 13, 1: 21}}
    context = make_context(DEFAULT_MODELS, table, 8, 0.5)
    options = model_options(context)
    rate = context.rates
    observation = {"arrival_rate": rate}
    shape = {s.label: s for s in context.shapes}
    small = decode(np.tile([0.0, -1.0, -1.0], 6), observation, context, options)
    large = decode(np.tile([0.0, 1.0, 1.0], 6), observation, context, options)
    for m, found in enumerate(options):
        chosen, rule = efficient_shapes(found, context)
        for plan, step, sign in ((small, -1, -1), (large, 1, 1)):
            label = chosen[min(max(rule + step, 0), len(chosen) - 1)]  # one step along the efficient shapes
            bmax = found[label][1]
            assert set(plan.replicas[m]) == {label}
            assert plan.batch[m] == expected_batch[bmax][sign], (m, bmax, plan.batch[m])
            assert context.curves[m][label][plan.batch[m]] <= context.slos[m]
            # capacity at least the measured rate unless the cluster is full (floors scaled down)
            thr = found[label][2][plan.batch[m]]
            full = sum(shape[l].ves for ls in plan.replicas.values() for l in ls) >= context.shapes[-1].ves * 8 - 1
            assert len(plan.replicas[m]) * thr >= rate[m] or len(plan.replicas[m]) == 1 or full
    more = decode(np.tile([1.0, 0.0, 0.0], 6), observation, context, options)
    less = decode(np.tile([-1.0, 0.0, 0.0], 6), observation, context, options)
    for plan in (more, less):
        assert sum(shape[l].ves for ls in plan.replicas.values() for l in ls) <= context.shapes[-1].ves * 8
        assert all(len(ls) >= 1 for ls in plan.replicas.values())
    assert more == less  # the weights are relative: all of them up or down shares alike
    big = make_context(DEFAULT_MODELS, table, 1000, 1.0)
    rng = np.random.default_rng(0)
    skewed = big.rates * np.array([40, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6])  # one model wants twice the cluster
    for i in range(20):  # oversubscribed: scaled down to the cluster exactly, nothing left to be refused
        rates = skewed if i % 2 else big.rates * 2
        plan = decode(rng.uniform(-1, 1, 18) + [1, 0, 0] * 6, {"arrival_rate": rates}, big, model_options(big))
        assert sum(shape[l].ves for ls in plan.replicas.values() for l in ls) <= 2 * 1000
        assert sum(shape[l].mes for ls in plan.replicas.values() for l in ls) <= 4 * 1000
    with pytest.raises(ClusterError, match="the RL action has 12 numbers; 6 models need 18"):
        decode(np.zeros(12), observation, context, options)


def test_no_model_is_left_below_its_floor_when_the_cluster_holds_the_floors(table):
    """One model's headroom cannot take another's minimum capacity: with the floors fitting, every
    model gets at least the replicas its measured rate needs at its shape and batch, whatever the
    headroom each asks for (the earlier decode scaled every count down by one factor, so a model
    asking 4 x its rate cut the others below their rates)."""
    from tcloud.cluster.rl import decode, model_options
    from tcloud.cluster.simulate import make_context

    big = make_context(DEFAULT_MODELS, table, 1000, 1.0)
    options = model_options(big)
    labels = [s.label for s in big.shapes]
    shape = {s.label: s for s in big.shapes}
    rates = big.rates * np.array([10, 0.3, 0.3, 0.3, 0.3, 0.3])  # model 0's floor: a quarter of the cluster
    rng = np.random.default_rng(4)
    for i in range(20):
        action = np.zeros((6, 3))
        action[:, 0] = rng.uniform(-1, 1, 6)
        action[0, 0] = 1.0  # the busiest model asks for the largest weight
        plan = decode(action.ravel(), {"arrival_rate": rates}, big, options)
        floors_mes = 0
        for m, found in enumerate(options):
            usable = [l for l in labels if l in found]
            label = usable[len(usable) // 2]  # a1 = 0: the middle shape
            _, bmax, thr = found[label]
            assert set(plan.replicas[m]) == {label} and plan.batch[m] == bmax // 2 + 1  # the middle, half up
            assert len(plan.replicas[m]) * thr[plan.batch[m]] >= rates[m]
            floors_mes += np.ceil(rates[m] / thr[plan.batch[m]]) * shape[label].mes
        assert floors_mes <= 0.8 * 4 * 1000  # the floors fit with room to spare, so the check can bite
        used_mes = sum(shape[l].mes for ls in plan.replicas.values() for l in ls)
        used_ves = sum(shape[l].ves for ls in plan.replicas.values() for l in ls)
        assert used_mes <= 4 * 1000 and used_ves <= 2 * 1000
        assert max(used_mes / 4000, used_ves / 2000) >= 0.99  # the rest is shared out, not left idle


def test_the_floor_never_drops_below_the_slow_estimate(table):
    """Between two bursts a model keeps the replicas the larger of its measured rate and the slow
    estimate need (the earlier decode sized floors by the last interval's rate alone, and a burst
    arriving after a lull found too few replicas)."""
    from tcloud.cluster.rl import SLOW_HALF_LIFE, RateMemory, decode, model_options
    from tcloud.cluster.simulate import make_context

    memory = RateMemory(2, interval=1.0)
    assert np.array_equal(memory.update([100.0, 10.0]), [100.0, 10.0])
    after = memory.update([20.0, 30.0])
    assert after[0] == pytest.approx(100 * 0.5 ** (1 / SLOW_HALF_LIFE)) and after[1] == 30.0
    for _ in range(40):
        late = memory.update([20.0, 30.0])
    assert np.allclose(late, [20.0, 30.0])  # it decays back to the measured rate
    assert np.array_equal(RateMemory(1, 1.0, half_life=0).update([5.0]), [5.0])

    big = make_context(DEFAULT_MODELS, table, 1000, 0.7)
    options = model_options(big)
    labels = [s.label for s in big.shapes]
    measured = big.rates * 0.5  # a lull
    rng = np.random.default_rng(7)
    for k in range(6):  # model k burst a moment ago: its slow estimate is 1.6 x its mean, above its share
        slow = measured.copy()
        slow[k] = 1.6 * big.rates[k]
        action = rng.uniform(-1, 1, (6, 3))
        action[:, 1:] = 0.0
        action[k, 0] = -1.0  # and the network weights it down: the floor still holds
        plan = decode(action.ravel(), {"arrival_rate": measured}, big, options, slow)
        plain = decode(action.ravel(), {"arrival_rate": measured}, big, options)
        for m, found in enumerate(options):
            usable = [l for l in labels if l in found]
            _, bmax, thr = found[usable[len(usable) // 2]]
            capacity = len(plan.replicas[m]) * thr[plan.batch[m]]
            assert capacity >= max(measured[m], slow[m]), (k, m)
        assert len(plan.replicas[k]) > len(plain.replicas[k])  # without the estimate it gets less: the check bites


def test_the_zero_action_holds_at_least_statics_split_between_bursts(table):
    """With every model in a lull below its mean rate, the rule with the zero action gives each
    model at least (within 2 %) the capacity static's split by mean rates gives it, or the cluster's
    headroom over its mean rate (``1 / load``) where static's one-replica minimum gives more (the
    recommenders: one replica at the rule's batch carries 3.5–15 × their mean rate at load 0.3). The
    earlier rule gave a model twice its measured rate, so a burst after a lull found half of what
    static holds. Capacity, not replicas: the rule's batch is not static's."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.rl import decode, model_options
    from tcloud.cluster.simulate import make_context
    from tcloud.cluster.workload import TPU_MODELS

    tpu = load_table(config="tpu_like", build=False)
    for load in (0.3, 0.4, 0.6):
        context = make_context(TPU_MODELS, tpu, 1000, load)
        options = model_options(context)
        static = Static().reset(context)
        for lull in (0.25, 0.625, 1.0):
            plan = decode(np.zeros(18), {"arrival_rate": context.rates * lull}, context, options)
            for m, name in enumerate(context.models):
                assert plan.replicas[m][0] == static.replicas[m][0]  # the same vNPU shape
                curve = context.curves[m][static.replicas[m][0]]
                mine = len(plan.replicas[m]) * plan.batch[m] / curve[plan.batch[m]]
                theirs = len(static.replicas[m]) * static.batch[m] / curve[static.batch[m]]
                enough = min(theirs, context.rates[m] / load)
                assert mine >= 0.98 * enough, (load, lull, name.name, mine, theirs)


def test_provisioned_for_peaks_the_rule_holds_what_static_peak_holds_and_so_does_the_policy(table):
    """Given each model's peak-to-mean ratio (as the benchmark's ``static-peak`` gets it), the rule
    shares the engines beyond the floors by the peak rates: in a lull every model keeps at least
    (within 2 %) the capacity ``static-peak`` gives it or the cluster's headroom over its mean rate
    (as above: static's two-replica minimum for DLRM is more), and a model provisioned for 4.3 x
    its mean holds more than without the ratios. The policy's first plan is ``static-peak``'s and its
    decisions use the ratios; the network still reads mean rates."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.rl import FloorRule, decode, model_options
    from tcloud.cluster.simulate import make_context
    from tcloud.cluster.workload import TPU_MODELS

    tpu = load_table(config="tpu_like", build=False)
    provision = np.array([1.4, 4.3, 2.4, 2.2, 1.7, 3.3])
    context = make_context(TPU_MODELS, tpu, 1000, 0.2)
    options = model_options(context)
    peak = Static(provision=provision).reset(context)
    lull = {"arrival_rate": context.rates * 0.5}
    plan = decode(np.zeros(18), lull, context, options, provision=provision)
    mean = decode(np.zeros(18), lull, context, options)
    for m, name in enumerate(context.models):
        curve = context.curves[m][peak.replicas[m][0]]
        mine = len(plan.replicas[m]) * plan.batch[m] / curve[plan.batch[m]]
        theirs = len(peak.replicas[m]) * peak.batch[m] / curve[peak.batch[m]]
        assert mine >= 0.98 * min(theirs, context.rates[m] / 0.2), (name.name, mine, theirs)
    assert len(plan.replicas[1]) > len(mean.replicas[1])
    policy = FloorRule()
    policy.provision = provision[:len(DEFAULT_MODELS)]
    sim = _sim(table, policy, trace="mmpp")
    sim.run(0.3)
    observation = sim.observe_last
    slow = np.maximum(policy.memory.slow * policy.memory.decay, observation["arrival_rate"])
    assert policy.decide(observation) == decode(np.zeros(18), observation, policy.context, policy.options, slow,
                                                policy.provision)
    assert policy.reset(sim.context) == Static(provision=policy.provision).reset(sim.context)


def test_the_action_is_a_bounded_residual_around_the_rule():
    """Whatever the network asks, on ``tpu_like`` at 250 x 4: the shape is the rule's or one within
    2 % of the best throughput per pNPU (so ResNet-50 and BERT-base stay on ``m2v1``; the first
    network's ``m1v1`` served ResNet-50 7 % less per pNPU), the batch within an eighth of the
    SLO-feasible range of the middle, and a model's weight within ``2 ** ±0.5`` of the rule's, so its
    replicas move by at most that factor (plus rounding)."""
    from tcloud.cluster.rl import decode, model_options
    from tcloud.cluster.simulate import make_context
    from tcloud.cluster.workload import TPU_MODELS

    tpu = load_table(config="tpu_like", build=False)
    context = make_context(TPU_MODELS, tpu, 1000, 0.5)
    options = model_options(context)
    observation = {"arrival_rate": context.rates * 0.5}
    rule = decode(np.zeros(18), observation, context, options)
    names = [m.name for m in context.models]
    assert {rule.replicas[m][0] for m in range(6)} == {"m2v1"}
    rng = np.random.default_rng(3)
    seen = {name: set() for name in names}
    for i in range(40):
        action = rng.uniform(-1, 1, (6, 3))
        action[:, 1] = rng.choice([-1.0, 0.0, 1.0], 6)
        plan = decode(action.ravel(), observation, context, options)
        for m, name in enumerate(names):
            label = plan.replicas[m][0]
            seen[name].add(label)
            _, bmax, thr = options[m][label]
            speed = context.per_pnpu[label] * thr[bmax // 2 + 1]
            best = max(context.per_pnpu[l] * o[2][o[1] // 2 + 1] for l, o in options[m].items())
            assert speed >= 0.98 * best or label == "m2v1", (name, label)
            centre = bmax // 2 + 1  # the middle of 1..b_max, rounded half up
            assert abs(plan.batch[m] - centre) <= 0.125 * (bmax - 1) + 0.5, (name, plan.batch[m], bmax)
            assert 1 <= plan.batch[m] <= bmax
    assert seen["resnet50"] == seen["bert_base"] == {"m2v1"} and seen["mobilenetv2"] == {"m1v1", "m2v1"}
    for m in (0, 2):  # the largest tilt one model can ask for, at the rule's shape and batch
        for a0, bound in ((1.0, 2 ** 0.5), (-1.0, 2 ** -0.5)):
            action = np.zeros((6, 3))
            action[m, 0] = a0
            tilted = decode(action.ravel(), observation, context, options)
            ratio = len(tilted.replicas[m]) / len(rule.replicas[m])
            assert min(1, bound) * 0.97 <= ratio <= max(1, bound) * 1.03, (names[m], a0, ratio)
            assert abs(ratio - 1) > 0.05  # it does move


def test_an_action_near_zero_is_the_rules_batch_exactly():
    """The rule's batch is a whole number, not a rounding tie: BERT-base's b_max of 8 and the
    recommenders' 32 on ``tpu_like`` put the old continuous map's middle at 4.5 and 16.5, where
    ``a2 = +1e-6`` moved the batch. Now a tiny ``a2`` changes nothing and the batch moves in whole
    steps only past the dead zone of ``|a2| <= 1/3``."""
    from tcloud.cluster.rl import batch_for, decode, model_options
    from tcloud.cluster.simulate import make_context
    from tcloud.cluster.workload import TPU_MODELS

    for bmax, centre in ((7, 4), (8, 5), (13, 7), (32, 17)):
        option = (1, bmax, None)
        for a2 in (0.0, 1e-6, -1e-6, 1e-3, -1e-3, 1 / 3, -1 / 3):
            assert batch_for(a2, option)[0] == centre, (bmax, a2)
        assert batch_for(0.34, option)[0] == centre + 1 and batch_for(-0.34, option)[0] == centre - 1
    assert batch_for(1.0, (1, 32, None))[0] == 21 and batch_for(-1.0, (1, 32, None))[0] == 13
    assert batch_for(5.0, (1, 32, None))[0] == 21 and batch_for(float("nan"), (1, 32, None))[0] == 17
    tpu = load_table(config="tpu_like", build=False)
    context = make_context(TPU_MODELS, tpu, 1000, 0.5)
    options = model_options(context)
    observation = {"arrival_rate": context.rates * 0.5}
    rule = decode(np.zeros(18), observation, context, options)
    for tiny in (1e-6, -1e-6, 1e-4):
        assert decode(np.full(18, tiny), observation, context, options) == rule
    names = [m.name for m in context.models]
    bmax = {name: options[m][rule.replicas[m][0]][1] for m, name in enumerate(names)}
    for name in ("bert_base", "dlrm", "ncf"):  # the even b_max the old map rounded half to even
        assert bmax[name] % 2 == 0 and rule.batch[names.index(name)] == bmax[name] // 2 + 1, (name, bmax)


def test_the_observation_remembers_a_burst(table):
    """Two features per model carry the slow rate estimate (:class:`~tcloud.cluster.rl.RateMemory`):
    over the replicas' capacity and over the measured rate (1 without a remembered burst)."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.rl import PER_MODEL, features, model_options

    sim = _sim(table, Static(), load=0.5, pnpus=16, trace="poisson")
    sim.step()
    obs, options = sim.observe_last, model_options(sim.context)
    plain = features(obs, sim.context, options).reshape(-1)[:6 * PER_MODEL].reshape(6, PER_MODEL)
    slow = obs["arrival_rate"] * np.array([3.0, 1, 1, 1, 1, 1])
    burst = features(obs, sim.context, options, slow)[:6 * PER_MODEL].reshape(6, PER_MODEL)
    assert np.allclose(plain[:, -1], 1.0) and np.allclose(plain[:, -2], plain[:, 1])  # slow = rate
    assert burst[0, -1] == pytest.approx(3.0) and burst[0, -2] == pytest.approx(min(3 * plain[0, 1], 4.0))
    assert np.array_equal(burst[1:], plain[1:]) and np.array_equal(burst[0, :-2], plain[0, :-2])
    below = features(obs, sim.context, options, obs["arrival_rate"] * 0.5)  # the estimate is at least the rate
    assert np.array_equal(below, features(obs, sim.context, options))
    idle = dict(obs, arrival_rate=np.array([0.0, 0.4, *obs["arrival_rate"][2:]]))  # below 1 request/s
    quiet = features(idle, sim.context, options).reshape(-1)[:6 * PER_MODEL].reshape(6, PER_MODEL)
    assert quiet[0, -1] == 1.0 and quiet[1, -1] == 1.0  # no burst remembered reads 1, idle or not
    after = features(idle, sim.context, options, np.array([2.5, 0.9, *obs["arrival_rate"][2:]]))
    after = after[:6 * PER_MODEL].reshape(6, PER_MODEL)
    assert after[0, -1] == pytest.approx(2.5) and after[1, -1] == 1.0  # rates below 1/s count as 1/s


def test_the_floor_rule_is_the_all_zero_action(table):
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.rl import FloorRule, decode

    sim = _sim(table, make_policy("rl-floor"), trace="mmpp")
    sim.run(0.3)
    policy = sim.policy
    assert isinstance(policy, FloorRule)
    observation = sim.observe_last
    slow = policy.memory.slow * policy.memory.decay
    zero = decode(np.zeros(18), observation, policy.context, policy.options, np.maximum(slow, observation["arrival_rate"]))
    assert policy.decide(observation) == zero


def test_observations_do_not_depend_on_the_cluster_size(table):
    """What lets a policy trained on 16-128 pNPUs run on 1000: a cluster k times larger with k times
    the replicas, requests and free engines is observed as the same vector, but for the arrivals'
    relative noise, which shrinks as 1 / sqrt(rate)."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.rl import PER_MODEL, features, model_options
    from tcloud.cluster.simulate import make_context

    sim = _sim(table, Static(), load=0.7, pnpus=16, trace="mmpp")
    for _ in range(3):
        sim.step()
    obs, k = sim.observe_last, 4
    large = make_context(DEFAULT_MODELS, table, 16 * k, 0.7, interval=0.05)
    scaled = {**obs, "replicas": [r * k for r in obs["replicas"]], "batch": [np.tile(b, k) for b in obs["batch"]],
              "busy": [np.tile(b, k) for b in obs["busy"]], "free_mes": obs["free_mes"] * k,
              "free_ves": obs["free_ves"] * k}
    for key in ("arrival_rate", "queue", "good"):
        scaled[key] = obs[key] * k
    small = features(obs, sim.context, model_options(sim.context))
    big = features(scaled, large, model_options(large))
    noise = np.zeros(small.size, dtype=bool)
    noise[9:6 * PER_MODEL:PER_MODEL] = True
    assert np.allclose(small[~noise], big[~noise], rtol=1e-5, atol=1e-6)
    rate_slo = obs["arrival_rate"] * sim.context.slos
    assert np.allclose(small[noise], 1 / np.sqrt(1 + rate_slo), rtol=1e-5)
    assert np.allclose(big[noise], 1 / np.sqrt(1 + k * rate_slo), rtol=1e-5)
    assert np.abs(small).max() <= 4 and small[1::PER_MODEL].max() > 0  # order 1, and the load is seen


# --- the NumPy policy ------------------------------------------------------------------------------

def test_the_shipped_policy_runs_with_numpy_alone_and_plans_valid_allocations():
    script = """
import sys
for name in ("jax", "skrl", "ray", "gymnasium", "torch", "flax", "optax"):
    sys.modules[name] = None  # any import of them fails
from tcloud.cluster.cli import run_simulation
from tcloud.cluster.rl import ShippedPolicy
policy = ShippedPolicy()
results, sim, _ = run_simulation(2, 4, policy, "mmpp", 0.6, 1.0, seed=1, interval=0.1)
shapes = {s.label for s in sim.context.shapes}
for g in sim.groups:
    assert g.replicas and {r.shape.label for r in g.replicas} <= shapes
    assert 1 <= g.batch.min() and g.batch.max() <= sim.context.max_batch
used_mes, used_ves = sim.cluster.engines_used()
assert used_mes <= sim.cluster.total_mes
print(results["overall"]["throughput"], results["overall"]["slo_attainment"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    throughput, attainment = map(float, out.stdout.split())
    assert throughput > 0 and 0 <= attainment <= 1


def test_bad_weight_files_and_mismatched_workloads_are_named(tmp_path, table):
    from tcloud.cluster.rl import NETWORK_FORMAT, ShippedPolicy

    with pytest.raises(ClusterError, match="no trained RL policy at .*missing.npz"):
        ShippedPolicy(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not numpy")
    with pytest.raises(ClusterError, match="bad.npz: not an RL policy weight file"):
        ShippedPolicy(bad)
    odd = tmp_path / "odd.npz"
    np.savez(odd, w0=np.zeros((3, 4)), b0=np.zeros(5))
    with pytest.raises(ClusterError, match="odd.npz: not an RL policy weight file"):
        ShippedPolicy(odd)
    wide = tmp_path / "wide.npz"
    np.savez(wide, format=NETWORK_FORMAT, w0=np.zeros((20, 4)), b0=np.zeros(4), w1=np.zeros((4, 3)), b1=np.zeros(3))
    with pytest.raises(ClusterError, match="wide.npz: the RL policy network takes 20 inputs and gives 3 outputs; this "
                                           "code expects 18 and 3"):
        ShippedPolicy(wide)
    layers = {"w0": np.zeros((18, 3)), "b0": np.zeros(3)}
    for name, extra, found in (("unversioned", {}, r"records no network format \(it predates them\)"),
                               ("older", {"format": NETWORK_FORMAT - 1}, f"is of network format {NETWORK_FORMAT - 1}")):
        np.savez(tmp_path / f"{name}.npz", **extra, **layers)
        with pytest.raises(ClusterError, match=f"{name}.npz: the weights were trained for another observation and "
                                               f"action encoding: the file {found}, this code reads format "
                                               f"{NETWORK_FORMAT}; train a new policy"):
            ShippedPolicy(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "current.npz", format=NETWORK_FORMAT, **layers)
    loaded = ShippedPolicy(tmp_path / "current.npz")  # the same layers load once their format is this code's
    assert [w.shape for w, _ in loaded.layers] == [(18, 3)]
    for value in (np.str_("False"), np.int64(0), np.array([False])):  # only one boolean says it
        np.savez(tmp_path / "flag.npz", format=NETWORK_FORMAT, slow_features=value, **layers)
        with pytest.raises(ClusterError, match="flag.npz: not an RL policy weight file .slow_features must be one boolean"):
            ShippedPolicy(tmp_path / "flag.npz")


def test_a_run_of_this_format_gets_its_untagged_weight_files_stamped_and_another_run_does_not(tmp_path):
    import json

    from tcloud.cluster.rl import NETWORK_FORMAT, ShippedPolicy
    from tcloud.cluster.rl_train import network_settings, stamp_format

    layers = {"w0": np.zeros((18, 3)), "b0": np.zeros(3)}
    for name, network in (("ours", network_settings()), ("older", dict(network_settings(), format=1))):
        run = tmp_path / name
        (run / "snapshots").mkdir(parents=True)
        (run / "progress.json").write_text(json.dumps({"settings": {"network": network}}))
        for path in (run / "rl_policy.npz", run / "snapshots" / "rl_policy_64.npz"):
            np.savez(path, **layers)
    (tmp_path / "ours" / "snapshots" / "rl_policy_65.npz").write_bytes(b"")  # interrupted while written
    (tmp_path / "ours" / "snapshots" / "rl_policy_66.npz").write_bytes(
        (tmp_path / "ours" / "rl_policy.npz").read_bytes()[:100])
    stamped = stamp_format(tmp_path / "ours")
    assert sorted(path.name for path in stamped) == ["rl_policy.npz", "rl_policy_64.npz"]
    assert [w.shape for w, _ in ShippedPolicy(tmp_path / "ours" / "snapshots" / "rl_policy_64.npz").layers] == [(18, 3)]
    assert stamp_format(tmp_path / "ours") == [] and stamp_format(tmp_path / "older") == []
    with np.load(tmp_path / "ours" / "rl_policy.npz") as data:
        assert int(data["format"]) == NETWORK_FORMAT and np.array_equal(data["w0"], layers["w0"])
    with pytest.raises(ClusterError, match="records no network format"):
        ShippedPolicy(tmp_path / "older" / "rl_policy.npz")


def test_one_shared_network_serves_any_number_of_models(table):
    """The network acts per model, so the shipped policy also serves a workload of three models."""
    from tcloud.cluster.rl import ShippedPolicy

    three = [model_by_name(DEFAULT_MODELS, n) for n in ("ncf", "dlrm_mlp", "bert_tiny")]
    sim = _sim(table, ShippedPolicy(), models=three)
    results = sim.run(0.5)
    assert len(results["models"]) == 3 and results["overall"]["throughput"] > 0
    assert all(g.replicas for g in sim.groups)


def test_the_exported_network_is_the_trained_policys_mean(tmp_path):
    import gymnasium
    import jax
    import jax.numpy as jnp

    from tcloud.cluster.rl import ShippedPolicy, observation_size
    from tcloud.cluster.rl_train import export, shared_policy_model

    size = observation_size(6)
    model = shared_policy_model(gymnasium.spaces.Box(-10, 10, (size,), np.float32),
                                gymnasium.spaces.Box(-1, 1, (18,), np.float32), None)
    model.init_state_dict(role="policy")
    x = np.random.default_rng(0).uniform(-1, 1, (5, size)).astype(np.float32)
    _, outputs = model.act({"observations": jnp.asarray(x)}, role="policy")
    untrained = ShippedPolicy(export(model, tmp_path / "zero.npz"))
    assert np.array_equal(np.asarray(outputs["mean_actions"]), np.zeros((5, 18)))  # the untrained network is the rule
    assert np.array_equal(untrained.act(x), np.zeros((5, 18)))
    rng = np.random.default_rng(1)  # trained-like weights everywhere, so the comparison below can fail
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), model.state_dict.params)
    model.state_dict = model.state_dict.replace(params=params)
    _, outputs = model.act({"observations": jnp.asarray(x)}, role="policy")
    exported = ShippedPolicy(export(model, tmp_path / "p.npz"))
    assert np.abs(exported.act(x)).max() > 0.1
    assert np.allclose(np.asarray(outputs["mean_actions"]), exported.act(x), atol=1e-5)


def test_a_network_trained_without_the_slow_features_never_sees_a_remembered_burst(tmp_path, table):
    """The ablation (``--no-slow-features``): its environment and its exported policy feed the two
    slow-estimate features as if no burst were remembered, the weight file records it, and the
    decode's floors still use the estimate."""
    import gymnasium
    import jax
    import jax.numpy as jnp

    from tcloud.cluster.rl import ShippedPolicy, decode, features, observation_size
    from tcloud.cluster.rl_train import ClusterEnv, export, shared_policy_model

    for slow_features in (True, False):
        env = ClusterEnv(steps=2, slow_features=slow_features)
        env.reset(seed=0)
        env.memory.slow = env.observation["arrival_rate"] * 3  # a burst remembered
        stepped = env.step(np.zeros(env.action_space.shape, np.float32))[0]
        seen = features(env.observation, env.context, env.options, env.slow if slow_features else None)
        assert np.array_equal(stepped, seen)
        assert not np.array_equal(seen, features(env.observation, env.context, env.options,
                                                 None if slow_features else env.slow))
    size = observation_size(6)
    model = shared_policy_model(gymnasium.spaces.Box(-10, 10, (size,), np.float32),
                                gymnasium.spaces.Box(-1, 1, (18,), np.float32), None)
    model.init_state_dict(role="policy")
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), model.state_dict.params)
    model.state_dict = model.state_dict.replace(params=params)
    with_slow, without = ShippedPolicy(export(model, tmp_path / "a.npz")), ShippedPolicy(
        export(model, tmp_path / "b.npz", slow_features=False))
    assert with_slow.slow_features and "slow_features" not in np.load(tmp_path / "a.npz").files
    assert without.slow_features is False
    sim = _sim(table, with_slow, trace="poisson")
    sim.step()
    observation = sim.observe_last
    plans = []
    for policy in (with_slow, without):
        policy.reset(sim.context)
        policy.memory.slow = observation["arrival_rate"] * 3
        slow = np.maximum(observation["arrival_rate"], policy.memory.slow * policy.memory.decay)
        seen = slow if policy.slow_features else None
        action = policy.act(features(observation, policy.context, policy.options, seen))
        plans.append(policy.decide(observation))
        assert plans[-1] == decode(action, observation, policy.context, policy.options, slow)
    assert plans[0] != plans[1]  # the same network and memory plan differently with and without the features
    x_slow = features(observation, with_slow.context, with_slow.options, slow)
    x_none = features(observation, with_slow.context, with_slow.options, None)
    assert not np.allclose(with_slow.act(x_slow), with_slow.act(x_none))  # the features reach the network


def test_the_training_command_passes_the_ablation_on_only_when_asked(tmp_path, monkeypatch, capsys):
    from tcloud.cluster import rl_train

    seen = []

    def fake_train(directory, *args, **kwargs):
        seen.append(kwargs)
        return {"done": 1, "seconds": 1.0, "rewards": [0.5], "weights": str(tmp_path / "w.npz")}

    monkeypatch.setattr(rl_train, "train", fake_train)
    common = ["cluster", "train", "--dir", str(tmp_path / "run"), "--timesteps", "1"]
    assert tcloud(common) == 0 and tcloud([*common, "--no-slow-features"]) == 0
    assert "slow_features" not in seen[0] and seen[1]["slow_features"] is False


def test_the_untrained_policy_plans_as_the_rule(tmp_path, table):
    """Training starts from the rule: the network's output layer starts at zero, so before any update
    the shipped-format policy's plans are :class:`~tcloud.cluster.rl.FloorRule`'s, interval by interval."""
    import gymnasium

    from tcloud.cluster.rl import FloorRule, ShippedPolicy, observation_size
    from tcloud.cluster.rl_train import export, shared_policy_model

    size = observation_size(6)
    model = shared_policy_model(gymnasium.spaces.Box(-10, 10, (size,), np.float32),
                                gymnasium.spaces.Box(-1, 1, (18,), np.float32), None)
    model.init_state_dict(role="policy")
    untrained = ShippedPolicy(export(model, tmp_path / "p.npz"))
    a, b = _sim(table, untrained, trace="mmpp"), _sim(table, FloorRule(), trace="mmpp")
    for _ in range(6):  # each simulator asks its policy at every interval; the plans must agree
        a.step()
        b.step()
        assert [[r.shape.label for r in g.replicas] for g in a.groups] == \
            [[r.shape.label for r in g.replicas] for g in b.groups]
        assert [list(g.batch) for g in a.groups] == [list(g.batch) for g in b.groups]


def test_the_shipped_policy_is_the_default_rl_policy(tmp_path):
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.rl import WEIGHTS, ShippedPolicy

    assert WEIGHTS.exists() and WEIGHTS.stat().st_size < 200_000 and isinstance(make_policy("rl"), ShippedPolicy)
    out = tmp_path / "rl.json"
    assert tcloud(["cluster", "simulate", "--nodes", "2", "--policy", "rl", "--duration", "1", "--interval", "0.25",
                   "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["setup"]["policy"] == "rl" and results["overall"]["throughput"] > 0


# --- training --------------------------------------------------------------------------------------

def test_training_on_two_ray_workers_resumes_from_its_checkpoint_and_writes_the_curve(tmp_path, capsys, monkeypatch):
    from skrl.agents.jax.ppo import PPO

    from tcloud.cluster import rl as rl_module
    from tcloud.cluster.rl import ShippedPolicy

    inits = []
    plain_init = PPO.init
    monkeypatch.setattr(PPO, "init", lambda self, **kw: inits.append(1) or plain_init(self, **kw))
    common = ["cluster", "train", "--dir", str(tmp_path / "run"), "--envs", "2", "--rollouts", "2",
              "--checkpoint-every", "2", "--interval", "0.01", "--episode-steps", "3"]
    assert tcloud([*common, "--timesteps", "4"]) == 0
    assert len(inits) == 1  # once for both segments (each init wrapped the networks in jax.jit again)
    first = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert first["done"] == 4 and first["steps"] == [4, 8] and len(first["rewards"]) == 2
    assert first["checkpoint"] == "checkpoint-4.pickle" and (tmp_path / "run" / "checkpoint-4.pickle").exists()
    assert not (tmp_path / "run" / "checkpoint-2.pickle").exists()  # the segment before is gone once recorded
    snapshot = tmp_path / "run" / "snapshots" / "rl_policy_4.npz"
    with np.load(snapshot) as data:  # as a run made before weight files recorded their format wrote it
        untagged = {name: data[name] for name in data.files if name != "format"}
    np.savez(snapshot, **untagged)
    curve = tmp_path / "curve.json"
    assert tcloud([*common, "--timesteps", "6", "--curve", str(curve), "--curve-episodes", "1"]) == 0  # resumes
    again = json.loads(curve.read_text())
    assert again["steps"] == [4, 8, 12] and again["rewards"][:2] == first["rewards"]
    assert curve.with_suffix(".png").stat().st_size > 1000
    scored = again["evaluation"]
    assert scored["steps"] == [4, 8, 12] and len(scored["reward"]) == 3  # the untagged snapshot was stamped on resume
    assert set(scored["baselines"]) == {"static", "clipper", "triton", "nexus", "rl-floor"}
    assert all(-2 <= r["reward"] <= 1 and 0 <= r["worst"] <= r["good"] for r in scored["baselines"].values())
    policy = ShippedPolicy(tmp_path / "run" / "rl_policy.npz")
    assert [w.shape for w, _ in policy.layers] == [(18, 64), (64, 64), (64, 3)]
    assert "environment steps" in capsys.readouterr().out
    shipped = tmp_path / "shipped.npz"
    monkeypatch.setattr(rl_module, "WEIGHTS", shipped)  # not the committed weights
    assert tcloud([*common, "--timesteps", "8", "--ship-snapshot", "5"]) != 0
    err = capsys.readouterr().err
    assert "--ship-snapshot 5: no snapshot after 5 environment steps" in err and "(there will be: 4, 8, 12, 16)" in err
    assert "Traceback" not in err and not shipped.exists()
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["done"] == 6  # refused before training
    with pytest.raises(SystemExit) as exc:
        tcloud([*common, "--timesteps", "6", "--ship", "--ship-snapshot", "8"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    (tmp_path / "run" / "snapshots" / "rl_policy_20.npz").write_bytes(b"not weights")
    assert tcloud([*common, "--timesteps", "6", "--ship-snapshot", "20"]) != 0  # there, but not a weight file
    err = capsys.readouterr().err
    assert "rl_policy_20.npz: not an RL policy weight file" in err and "Traceback" not in err
    assert not shipped.exists()
    (tmp_path / "run" / "snapshots" / "rl_policy_20.npz").unlink()
    assert tcloud([*common, "--timesteps", "6", "--ship-snapshot", "8"]) == 0  # a chosen snapshot, not the last
    assert shipped.read_bytes() == (tmp_path / "run" / "snapshots" / "rl_policy_8.npz").read_bytes()
    assert shipped.read_bytes() != (tmp_path / "run" / "rl_policy.npz").read_bytes()
    import ray

    assert not ray.is_initialized()  # training stops the Ray it started (a later test's Ray found it dead)
    with pytest.raises(ClusterError, match="the checkpoint was trained with"):
        from tcloud.cluster.rl_train import train

        train(tmp_path / "run", timesteps=8, envs=2, checkpoint_every=2, rollouts=2, interval=0.05, steps=3)
    checkpoint = tmp_path / "run" / json.loads((tmp_path / "run" / "progress.json").read_text())["checkpoint"]
    assert checkpoint.name == "checkpoint-6.pickle"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # as an interrupted write by older code left it
    assert tcloud([*common, "--timesteps", "8"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint-6.pickle: not a checkpoint this code can resume (UnpicklingError" in err and "Traceback" not in err
    checkpoint.unlink()
    assert tcloud([*common, "--timesteps", "8"]) == 1
    err = capsys.readouterr().err
    assert "records 6 steps per worker trained, but their checkpoint" in err and "checkpoint-6.pickle is missing" in err
    assert not ray.is_initialized()
    (tmp_path / "run" / "progress.json").write_text('{"done": 3, "settings": ')
    assert tcloud([*common, "--timesteps", "8"]) == 1
    err = capsys.readouterr().err
    assert "progress.json:1: not JSON (Expecting value); start afresh (--fresh)" in err and "Traceback" not in err


def test_resuming_a_run_made_by_older_code_is_refused_by_name(tmp_path):
    """A run directory from the 13-feature code recorded no network format: its parameters do not
    fit this code's network, so resuming is refused before anything is loaded (it ended in a raw
    JAX shape error)."""
    from tcloud.cluster.rl_train import network_settings, train

    options = {"timesteps": 4, "envs": 2, "checkpoint_every": 2, "rollouts": 2}
    old = {"envs": 2, "per_worker": 1, "rollouts": 2, "learning_rate": 3e-4, "env": {}}  # as the old code wrote
    (tmp_path / "progress.json").write_text(json.dumps({"done": 2, "steps": [4], "rewards": [0.0], "good": [1.0],
                                                        "worst": [1.0], "seconds": 1.0, "settings": old}))
    (tmp_path / "checkpoint.pickle").write_bytes(b"not loaded")
    with pytest.raises(ClusterError, match=r"a network of format None, this code trains .*start afresh \(--fresh\)"):
        train(tmp_path, **options)
    other = dict(old, network=dict(network_settings(), per_model=13))
    (tmp_path / "progress.json").write_text(json.dumps({"done": 2, "settings": other}))
    with pytest.raises(ClusterError, match="format .*'per_model': 13"):
        train(tmp_path, **options)
    assert network_settings()["per_model"] == 15 and network_settings()["hidden"] == [64, 64]


def test_a_progress_file_with_fields_of_the_wrong_kind_is_named(tmp_path):
    from tcloud.cluster.rl_train import _check_progress

    good = {"done": 2, "steps": [4], "rewards": [0.5], "good": [1.0], "worst": [1.0], "seconds": 1.0}
    _check_progress(tmp_path / "progress.json", good)
    for change in ({"done": -3}, {"rewards": ["x"]}, {"seconds": True}, {"steps": 4}):
        with pytest.raises(ClusterError, match="progress.json: not a training progress file .field"):
            _check_progress(tmp_path / "progress.json", {**good, **change})
    for change in ({"good": []}, {"steps": [], "rewards": [], "good": [], "worst": []}):
        with pytest.raises(ClusterError, match="must hold one entry per segment trained"):
            _check_progress(tmp_path / "progress.json", {**good, **change})


def test_a_bad_curve_target_is_named_before_training(tmp_path, capsys):
    (tmp_path / "curve.json").mkdir()
    assert tcloud(["cluster", "train", "--dir", str(tmp_path / "run"), "--curve", str(tmp_path / "curve.json")]) == 1
    err = capsys.readouterr().err
    assert "learning curve " + str(tmp_path / "curve.json") + " is a directory" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "progress.json").exists()


def test_a_fresh_run_moves_the_old_snapshots_aside_and_ships_only_its_own(tmp_path, monkeypatch):
    """``--fresh`` must not count (``--ship-snapshot``) or score (the learning curve) an earlier run's
    snapshots: training moves them aside before it starts, and the pre-check counts only its own."""
    from tcloud.cluster import rl_train
    from tcloud.cluster.cli import snapshot_steps

    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "rl_policy_400.npz").write_bytes(b"an earlier run's")
    for name in ("progress.json", "checkpoint-400.pickle", ".checkpoint-402.pickle.partial"):
        (tmp_path / name).write_text("an earlier run's")
    assert snapshot_steps(tmp_path, 4, 2, 2, resume=True) == [4, 8, 400]
    assert snapshot_steps(tmp_path, 4, 2, 2, resume=False) == [4, 8]

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(rl_train, "RayVectorEnv", stop)
    with pytest.raises(RuntimeError, match="stopped before training"):
        rl_train.train(tmp_path, timesteps=4, envs=2, checkpoint_every=2, rollouts=2, resume=False)
    assert not (tmp_path / "snapshots").exists()
    moved = list(tmp_path.glob("before-*/snapshots/rl_policy_400.npz"))
    assert len(moved) == 1 and moved[0].read_bytes() == b"an earlier run's"
    for name in ("progress.json", "checkpoint-400.pickle", ".checkpoint-402.pickle.partial"):
        assert not (tmp_path / name).exists() and (moved[0].parent.parent / name).read_text() == "an earlier run's"


@pytest.mark.parametrize("options, message", [
    ({"timesteps": 0}, "timesteps must be a positive integer, got 0"),
    ({"envs": 1.5}, "envs must be a positive integer"),
    ({"checkpoint_every": 3, "rollouts": 2}, r"checkpoint_every \(3\) must be a multiple of rollouts \(2\)"),
    ({"slow_features": "no"}, "slow_features must be True or False, got 'no'"),
    ({"seed": 2 ** 32}, r"seed must be an integer from 0 to 4294967295 \(JAX's key\), got 4294967296"),
])
def test_bad_training_settings_are_named(tmp_path, options, message):
    from tcloud.cluster.rl_train import train

    with pytest.raises(ClusterError, match=message):
        train(tmp_path, **{"timesteps": 4, "checkpoint_every": 2, "rollouts": 2, **options})


@pytest.mark.parametrize("options, message", [
    ({"interval": 0}, "interval must be a positive finite number of seconds, got 0"),
    ({"interval": float("inf")}, "interval must be a positive finite number of seconds, got inf"),
    ({"loads": (1e300, 1e308)}, "loads must be a range .* at most 100"),
    ({"cost_weight": float("inf")}, "cost_weight must be non-negative and finite"),
    ({"nodes": (4, 0)}, r"nodes must be positive integers, got \(4, 0\)"),
    ({"steps": 0}, "episode steps must be a positive integer"),
    ({"loads": (0.9, 0.2)}, "loads must be a range"),
    ({"cost_weight": -1}, "cost_weight must be non-negative"),
    ({"worst_weight": -0.5}, "worst_weight must be non-negative"),
    ({"slow_features": "no"}, "slow_features must be True or False, got 'no'"),
    ({"table": "no/such/table.json"}, "no service-time table at no/such/table.json"),
])
def test_bad_environment_settings_are_named(options, message):
    from tcloud.cluster.rl_train import ClusterEnv

    with pytest.raises(ClusterError, match=message):
        ClusterEnv(**options)


def test_the_snapshot_selection_takes_at_least_one_point(tmp_path, capsys):
    from benchmarks.cluster_rl_select import main, spaced

    found = [(4 * i, f"s{i}") for i in range(1, 11)]
    assert spaced(found, 1) == [(40, "s10")]  # the last alone (it divided by zero)
    assert spaced(found, 2) == [(4, "s1"), (40, "s10")]
    assert spaced(found, 4) == [(4, "s1"), (16, "s4"), (28, "s7"), (40, "s10")]
    assert spaced(found[:3], 6) == found[:3]
    (tmp_path / "rl_policy_4.npz").write_bytes(b"")
    for bad in ("0", "-2"):  # it evaluated the rule alone
        with pytest.raises(SystemExit) as exc:
            main(["--snapshots", str(tmp_path), "--points", bad])
        assert exc.value.code == 2
        assert f"--points must be at least 1 (1: the last snapshot alone), got {bad}" in capsys.readouterr().err


def test_a_progress_file_naming_a_checkpoint_outside_its_directory_is_refused(tmp_path):
    from tcloud.cluster.rl_train import _check_progress

    state = {"done": 2, "steps": [4], "rewards": [0.0], "good": [1.0], "worst": [1.0], "seconds": 1.0}
    _check_progress(tmp_path / "progress.json", {**state, "checkpoint": "checkpoint-2.pickle"})
    for name in ("../checkpoint-2.pickle", "/etc/passwd", 7):
        with pytest.raises(ClusterError, match="field 'checkpoint' must name a checkpoint-<steps>.pickle file"):
            _check_progress(tmp_path / "progress.json", {**state, "checkpoint": name})


def test_a_progress_file_with_a_key_given_twice_is_refused_by_name(tmp_path):
    from tcloud.cluster.rl_train import _read_progress

    (tmp_path / "progress.json").write_text('{"done": 2, "done": 4}')
    with pytest.raises(ClusterError, match=r"progress.json: not a training progress file \(key 'done' given twice"):
        _read_progress(tmp_path / "progress.json")
