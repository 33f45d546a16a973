"""Training the RL policy: a gymnasium environment, Ray rollout workers and skrl's PPO (JAX).

* :class:`ClusterEnv` — a gymnasium environment around :class:`~.simulate.Simulator` on a small
  cluster (default 4 × 4 pNPUs); one step is one control interval; reward per interval: requests
  served within SLO over requests arrived, minus ``worst_weight`` × the worst model's shortfall
  (1 − its fraction within SLO), minus ``cost_weight`` × the pay-as-you-go price of the vNPUs
  held over the whole cluster's. The observation and action (:mod:`.rl`) are scale-free, so
  the policy trained here runs on 250 × 4 pNPUs. Where a step's time goes (measured on
  ``tpu_like``, 16 pNPUs, 0.25-s steps): 93 % simulating the interval's batches, 5 % applying the
  plan (placement), 2 % observation and action. A step is fast because the interval holds few
  requests (16 pNPUs × 0.25 s), not because anything is approximated.
* :class:`RayVectorEnv` — several :class:`ClusterEnv` in Ray actors behind gymnasium's vector API
  (autoreset), so rollouts run on Ray workers.
* :func:`train` — skrl PPO, checkpointed and resumable; the policy is
  :func:`shared_policy_model` (one network applied to each model); :func:`export` writes its mean
  network as an ``.npz`` that :class:`~.rl.ShippedPolicy` runs with NumPy alone.
* :func:`evaluate` and :func:`learning_curve` score snapshots and baselines on the same episodes;
  :func:`write_curve` plots them.

Why skrl with JAX: stable-baselines3 and sbx-rl depend on PyTorch, whose default wheel pulls CUDA
libraries (gigabytes); ``skrl[jax]`` added 534 MB to this project's environment (1,097 → 1,631 MB,
installed in 25 s on the 2-core machine) and no PyTorch.
"""

import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import gymnasium
import numpy as np

from tcloud.isa.errors import TcloudError
from tcloud.runtime.files import read_text, unique_pairs, write_figure, write_file

from .policies import Policy
from .rl import (ACTIONS, GLOBAL, NETWORK_FORMAT, PER_MODEL, RateMemory, decode, features, initial_plan,
                 model_options, observation_size)
from .service import ray_results
from .simulate import MAX_LOAD
from .workload import ClusterError


TRAINING_TRACES = ("poisson", "mmpp", "diurnal", "azure")
"""The traces an episode draws from (``azure``: the shipped Azure Functions sample)."""


class _Driven(Policy):
    """The policy inside :class:`ClusterEnv`: starts as :func:`~.rl.initial_plan`; the
    environment's actions make the later plans."""

    name = "rl"

    def reset(self, context):
        return initial_plan(context)

    def decide(self, observation):
        return None


class ClusterEnv(gymnasium.Env):
    """A gymnasium environment: one step is one control interval of a small simulated cluster.

    The observation and action are :func:`~.rl.features` and :func:`~.rl.decode`'s, scale-free, so
    that the policy trained here runs on any cluster size. Reward per interval: the requests served
    within SLO over those that arrived, minus ``worst_weight`` × (1 − the lowest per-model fraction
    within SLO), minus ``cost_weight`` × the pay-as-you-go price of the vNPUs held over the price of
    the whole cluster. The benchmark's goal (≥ 99 % of all requests within SLO) needs every model
    served, so the worst model's term makes starving one model cost more than it can gain on the
    others' requests.

    Parameters
    ----------
    nodes : int or sequence of int
        Nodes of the training cluster; a sequence: each episode draws one of them (so the policy
        sees the statistics of several cluster sizes).
    pnpus_per_node : int
    interval : float
        Simulated seconds per step.
    steps : int
        Steps per episode (then ``truncated``).
    loads : (float, float)
        Each episode draws its load uniformly from this range and its trace from :data:`TRAINING_TRACES`
        (Poisson, MMPP, diurnal with one day per episode, and the shipped Azure Functions sample from a
        random minute at ``burst_intervals[0]`` intervals per minute).
    cost_weight : float
    worst_weight : float
    config : str
        pNPU configuration of the shipped service-time table.
    table : path, optional
        Service-time table (default: the shipped one for ``config``); the environment serves the
        models it was measured for.
    burst_intervals : (float, float)
        MMPP mean sojourns in the high and low state, in intervals (as the benchmark's 2 s and 8 s
        at 1-s intervals), but at least twice the trace's rate grid (``2 × RATE_STEP`` × each).
    seed : int
    slow_features : bool
        Whether observations carry the slow rate estimate in its two features (``False``: as if no
        burst were remembered, for an ablation; the decode's floors use the estimate either way).
    """

    def __init__(self, nodes=4, pnpus_per_node=4, interval=0.005, steps=32, loads=(0.3, 1.1), cost_weight=0.1,
                 worst_weight=1.0, config="small", table=None, burst_intervals=(2, 8), seed=0, slow_features=True):
        from .service import DEFAULT_BACKEND, ServiceTable, default_path

        if not (isinstance(interval, (int, float)) and 0 < interval < math.inf):
            raise ClusterError(f"interval must be a positive finite number of seconds, got {interval!r}")
        if not (isinstance(cost_weight, (int, float)) and 0 <= cost_weight < math.inf):
            raise ClusterError(f"cost_weight must be non-negative and finite, got {cost_weight!r}")
        if not (isinstance(worst_weight, (int, float)) and 0 <= worst_weight < math.inf):
            raise ClusterError(f"worst_weight must be non-negative and finite, got {worst_weight!r}")
        if not isinstance(slow_features, bool):
            raise ClusterError(f"slow_features must be True or False, got {slow_features!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ClusterError(f"episode steps must be a positive integer, got {steps!r}")
        if not (len(loads) == 2 and 0 < loads[0] <= loads[1] <= MAX_LOAD):
            raise ClusterError(f"loads must be a range (low, high) of positive fractions, at most {MAX_LOAD:g}, "
                               f"got {loads!r}")
        path = Path(table) if table else default_path(config, DEFAULT_BACKEND)
        if not path.exists():
            raise ClusterError(f"no service-time table at {path}; run `tcloud cluster table`")
        self.table = ServiceTable.load(path)
        self.models = self.table.models
        if not self.models:
            raise ClusterError(f"{path}: the table names no models (field 'models')")
        self.nodes = tuple(nodes) if isinstance(nodes, (list, tuple)) else (nodes,)
        if not self.nodes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.nodes):
            raise ClusterError(f"nodes must be positive integers, got {nodes!r}")
        self.pnpus_per_node, self.interval, self.steps = pnpus_per_node, interval, steps
        self.loads, self.cost_weight, self.burst_intervals = loads, cost_weight, burst_intervals
        self.worst_weight, self.slow_features = worst_weight, slow_features
        self.rng = np.random.default_rng(seed)
        size = observation_size(len(self.models))
        self.observation_space = gymnasium.spaces.Box(-10, 10, (size,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (ACTIONS * len(self.models),), np.float32)
        self.contexts = {}

    def reset(self, seed=None, options=None):
        from .placement import Cluster
        from .simulate import Simulator, make_context
        from .workload import AZURE_SAMPLE, RATE_STEP, Arrivals, make_trace

        if seed is not None:
            self.rng = np.random.default_rng(seed)
        load = float(self.rng.uniform(*self.loads))
        trace = str(self.rng.choice(TRAINING_TRACES))
        episode_seed = int(self.rng.integers(1 << 30))
        nodes = int(self.rng.choice(self.nodes))
        pnpus = nodes * self.pnpus_per_node
        self.context = make_context(self.models, self.table, pnpus, load, self.interval)
        self.options = model_options(self.context)
        whole = self.context.shapes[-1]
        self.price_total = self.context.prices[whole.label] * pnpus
        duration = self.interval * (self.steps + 1)
        high_s, low_s = (max(k * self.interval, k * 2 * RATE_STEP) for k in self.burst_intervals)
        if trace == "azure":
            shape = make_trace(str(AZURE_SAMPLE), self.models, duration, episode_seed, seconds_per_minute=high_s,
                               start_minute=int(self.rng.integers(60)))
        else:
            shape = make_trace(trace, self.models, duration, episode_seed, high_s=high_s, low_s=low_s)
        arrivals = Arrivals(shape, self.context.rates, episode_seed)
        self.sim = Simulator(self.context, Cluster(nodes, self.pnpus_per_node, self.table.config), _Driven(),
                             arrivals)
        self.t = 0
        self.memory = RateMemory(len(self.models), self.interval)
        self.sim.step()
        self.observation = self.sim.observe_last
        self.slow = self.memory.update(self.observation["arrival_rate"])
        return self.observe(self.observation), {"load": load, "trace": trace, "pnpus": pnpus}

    def observe(self, observation):
        """The network's input: :func:`~.rl.features` with the slow estimate, or without it (as if no
        burst were remembered) when ``slow_features`` is off."""
        return features(observation, self.context, self.options, self.slow if self.slow_features else None)

    def step(self, action):
        return self.advance(decode(action, self.observation, self.context, self.options, self.slow))

    def advance(self, plan):
        """One step with a :class:`~.simulate.Plan` instead of an action (to score other policies)."""
        self.sim.apply(plan)
        self.sim.step()
        self.observation = obs = self.sim.observe_last
        self.slow = self.memory.update(obs["arrival_rate"])  # the estimate the next decision sees
        self.t += 1
        offered = max(float(obs["arrival_rate"].sum()) * self.interval, 1.0)
        good = min(float(obs["good"].sum()) / offered, 1.0)
        arrived = obs["arrival_rate"] * self.interval
        mine = np.minimum(obs["good"] / np.maximum(arrived, 1.0), 1.0)
        worst = float(mine[arrived >= 1].min()) if (arrived >= 1).any() else 1.0
        held = sum(self.context.prices[r] for labels in obs["replicas"] for r in labels) / self.price_total
        reward = good - self.worst_weight * (1 - worst) - self.cost_weight * held
        return (self.observe(obs), float(reward), False, self.t >= self.steps,
                {"good": good, "worst": worst, "held": held})


def evaluate(policy, episodes=8, seed=1000, **env_options):
    """Mean reward, fraction within SLO and worst model's fraction within SLO per step of ``policy`` (a :class:`~.policies.Policy`, or
    ``None`` for :func:`~.rl.initial_plan` throughout) over ``episodes`` episodes of
    :class:`ClusterEnv` (seeds ``seed``, ``seed + 1``, ...): the same episodes for every policy, so
    the learned one is scored next to the baselines in its own environment."""
    env = ClusterEnv(**env_options)
    rewards, good, worst = [], [], []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        if policy is not None:
            env.sim.apply(policy.reset(env.context), initial=True)  # deployed before the episode, as rl's plan
        for _ in range(env.steps):
            plan = policy.decide(env.observation) if policy is not None else None
            _, reward, _, _, info = env.advance(plan)
            rewards.append(reward)
            good.append(info["good"])
            worst.append(info["worst"])
    return {"reward": float(np.mean(rewards)), "good": float(np.mean(good)), "worst": float(np.mean(worst))}


class RayVectorEnv(gymnasium.vector.VectorEnv):
    """``count`` Ray actors holding ``per_worker`` :class:`ClusterEnv` instances each, stepped in
    parallel behind gymnasium's vector API; an episode that ends is reset in its actor at once (the
    observation returned is the new episode's first). Several environments per actor make one
    driver step (one policy evaluation, one Ray round trip) serve more environment steps.

    Parameters
    ----------
    count : int
        Ray actors.
    per_worker : int
        Environments per actor (``num_envs = count × per_worker``).
    env_options : dict
        Keyword arguments of :class:`ClusterEnv` (environment ``i`` gets ``seed + i``).
    """

    def __init__(self, count=2, per_worker=1, **env_options):
        import ray

        seed = env_options.pop("seed", 0)
        probe = ClusterEnv(**env_options)
        probe.reset(seed=seed)  # bad options (an impossible SLO, ...) fail here, not in every worker
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # Ray runs workers at nice 15 by default; here they do the training's main work (the
            # rollouts), so they run at the driver's priority unless the caller set it.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=count, include_dashboard=False, log_to_driver=False, configure_logging=False)

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self, options, seeds):
                self.envs = [ClusterEnv(**options, seed=seed) for seed in seeds]

            def reset(self, seed):
                return [env.reset(seed=None if seed is None else seed + i) for i, env in enumerate(self.envs)]

            def step(self, actions):
                out = []
                for env, action in zip(self.envs, actions):
                    obs, reward, terminated, truncated, info = env.step(action)
                    if terminated or truncated:
                        obs, _ = env.reset()
                    out.append((obs, reward, terminated, truncated, info))
                return out

        self._ray = ray
        self.per_worker = per_worker
        self.workers = [Worker.remote(env_options, [seed + i * per_worker + k for k in range(per_worker)])
                        for i in range(count)]
        self.num_envs = count * per_worker
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        self.observation_space = gymnasium.vector.utils.batch_space(probe.observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(probe.action_space, self.num_envs)

    def reset(self, seed=None, options=None):
        k = self.per_worker
        results = ray_results([w.reset.remote(None if seed is None else seed + i * k)
                               for i, w in enumerate(self.workers)])
        return np.stack([r[0] for part in results for r in part]), {}

    def step(self, actions):
        actions, k = np.asarray(actions), self.per_worker
        parts = ray_results([w.step.remote(actions[i * k:(i + 1) * k]) for i, w in enumerate(self.workers)])
        obs, reward, terminated, truncated, infos = zip(*[r for part in parts for r in part])
        return (np.stack(obs), np.array(reward, dtype=np.float32), np.array(terminated), np.array(truncated),
                {key: np.array([i[key] for i in infos]) for key in ("good", "worst", "held")})

    def close(self, **kwargs):
        """Stop the actors, and Ray itself if this environment started it."""
        for worker in self.workers:
            self._ray.kill(worker)
        if self.started_ray:
            self._ray.shutdown()


HIDDEN = (64, 64)
"""Hidden layer widths of the shared per-model policy network."""


def network_settings():
    """The network's shape and encoding, as recorded in a training run's settings.

    Returns
    -------
    dict
        ``format`` (:data:`NETWORK_FORMAT`), ``per_model``, ``global``, ``actions`` and ``hidden``.
    """
    return {"format": NETWORK_FORMAT, "per_model": PER_MODEL, "global": GLOBAL, "actions": ACTIONS,
            "hidden": list(HIDDEN)}


def shared_policy_model(observation_space, action_space, device, initial_log_std=-0.7):
    """The skrl Gaussian policy whose mean is the shared per-model network of
    :class:`~.rl.NumpyPolicy` (Flax dense layers ``layer_0``, ``layer_1``, ...; one log standard
    deviation per action number). The output layer starts at zero, so the untrained mean action
    is the rule's (:class:`~.rl.FloorRule`) and training learns departures from it; the first
    network started from random outputs and ended below the rule (0.72 against 0.749 on its learning
    curve's episodes)."""
    import flax.linen as nn
    import jax.numpy as jnp
    from skrl.models.jax import GaussianMixin, Model

    models = (observation_space.shape[0] - GLOBAL) // PER_MODEL

    class SharedGaussian(GaussianMixin, Model):
        def __init__(self, observation_space, action_space, device=None, **kwargs):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device,
                           **kwargs)
            GaussianMixin.__init__(self, clip_actions=True, clip_log_std=True, min_log_std=-5, max_log_std=1,
                                   reduction="sum", role="policy")

        def setup(self):
            widths = (*HIDDEN, ACTIONS)
            self.layer_stack = [nn.Dense(width, name=f"layer_{i}", **({"kernel_init": nn.initializers.zeros}
                                                                     if i == len(widths) - 1 else {}))
                                for i, width in enumerate(widths)]
            self.log_std_parameter = self.param("log_std_parameter",
                                                lambda _: jnp.full(models * ACTIONS, initial_log_std))

        def __call__(self, inputs, role=""):
            x = inputs["observations"]
            own = x[:, :models * PER_MODEL].reshape(x.shape[0], models, PER_MODEL)
            cluster = jnp.broadcast_to(x[:, None, models * PER_MODEL:], (x.shape[0], models, GLOBAL))
            h = jnp.concatenate([own, cluster], axis=-1)
            for i, layer in enumerate(self.layer_stack):
                h = layer(h)
                if i < len(self.layer_stack) - 1:
                    h = jnp.tanh(h)
            return h.reshape(x.shape[0], models * ACTIONS), {"log_std": self.log_std_parameter}

    return SharedGaussian(observation_space=observation_space, action_space=action_space, device=device)


def train(directory, timesteps=256, envs=2, checkpoint_every=64, seed=0, resume=True, progress=None, rollouts=32,
          learning_rate=3e-4, per_worker=1, **env_options):
    """Train the RL policy with skrl's PPO (JAX) on ``envs`` Ray workers, ``per_worker``
    environments each.

    Parameters
    ----------
    directory : path
        Where checkpoints (``checkpoint-<steps>.pickle``, the one ``progress.json`` names) and the exported
        weights go (``rl_policy.npz``, and ``snapshots/rl_policy_<steps>.npz`` after each segment). A
        segment counts once ``progress.json`` names its checkpoint (written atomically, after it), so
        an interruption at any point resumes from a checkpoint and a record that agree.
    timesteps : int
        Steps per environment in total.
    checkpoint_every : int
        Steps per worker between two checkpoints (a multiple of ``rollouts``); an interrupted run
        resumes from the last one (``resume``).
    resume : bool
        Continue from the checkpoint in ``directory`` if there is one (refused if it was trained with
        other settings or another network format); otherwise start afresh and move an earlier run's
        ``progress.json``, checkpoints and ``snapshots/`` aside to ``before-<date-time>-<suffix>/``.
    rollouts : int
        Steps per worker between two PPO updates.
    progress : callable, optional
        ``progress(done, total)``.
    **env_options
        Keyword arguments of :class:`ClusterEnv`.

    Returns
    -------
    dict
        ``done`` steps per environment, ``envs``, ``per_worker``, wall ``seconds``, and per segment
        between two checkpoints the environment steps so far (``steps``, all environments), the
        mean reward, the mean fraction served within SLO and the mean of the worst model's
        (``rewards``, ``good``, ``worst``); the exported ``weights`` path.

    Raises
    ------
    ClusterError
        A bad count, or a checkpoint in ``directory`` from a run with other settings (including
        one made by code with another observation, action or network size, :func:`network_settings`).
    """
    from skrl import config as skrl_config
    from skrl.agents.jax.ppo import PPO, PPO_CFG
    from skrl.envs.wrappers.jax import wrap_env
    from skrl.memories.jax import RandomMemory
    from skrl.resources.preprocessors.jax import RunningStandardScaler
    from skrl.trainers.jax import SequentialTrainer
    from skrl.utils.model_instantiators.jax import deterministic_model

    for handler in logging.getLogger("skrl").handlers:  # skrl's handler keeps the stderr of its import,
        if type(handler) is logging.StreamHandler:  # which may be closed (setStream would flush it)
            handler.stream = sys.stderr
    for name, value in (("timesteps", timesteps), ("envs", envs), ("checkpoint_every", checkpoint_every),
                        ("rollouts", rollouts), ("per_worker", per_worker)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterError(f"{name} must be a positive integer, got {value!r}")
    if checkpoint_every % rollouts:
        raise ClusterError(f"checkpoint_every ({checkpoint_every}) must be a multiple of rollouts ({rollouts})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ClusterError(f"seed must be an integer from 0 to {2 ** 32 - 1} (JAX's key), got {seed!r}")
    slow_features = env_options.pop("slow_features", True)
    if not isinstance(slow_features, bool):
        raise ClusterError(f"slow_features must be True or False, got {slow_features!r}")
    if not slow_features:  # recorded only when off, so that runs made before the option still resume
        env_options["slow_features"] = False
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path, checkpoint = directory / "progress.json", directory / LEGACY_CHECKPOINT
    settings = {"envs": envs, "per_worker": per_worker, "rollouts": rollouts, "learning_rate": learning_rate,
                "env": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(env_options.items())},
                "network": network_settings()}
    state = {"done": 0, "steps": [], "rewards": [], "good": [], "worst": [], "seconds": 0.0, "settings": settings}
    if resume and state_path.exists():
        state = _read_progress(state_path)
        found = state.get("settings")
        if not isinstance(found, dict):
            raise ClusterError(f"{state_path}: not a training progress file (field 'settings' is missing or not an "
                               f"object); start afresh (--fresh) or use another --dir")
        if found.get("network") != settings["network"]:
            raise ClusterError(f"{state_path}: the checkpoint holds a network of format {found.get('network')}, "
                               f"this code trains {settings['network']}; start afresh (--fresh) or use another --dir")
        if found != settings:
            raise ClusterError(f"{state_path}: the checkpoint was trained with {found}, not "
                               f"{settings}; pass the same options, or start afresh")
        _check_progress(state_path, state)
        checkpoint = directory / state.get("checkpoint", LEGACY_CHECKPOINT)
        if state["done"] and not checkpoint.is_file():
            raise ClusterError(f"{state_path}: records {state['done']} steps per worker trained, but their checkpoint "
                               f"{checkpoint} is missing; start afresh (--fresh) or use another --dir")
        stamp_format(directory)
        _remove_checkpoints(directory, keep=checkpoint.name)
    else:  # a fresh run's record, checkpoints, curve and snapshots must not mix with an earlier run's
        _move_aside(directory)
    skrl_config.jax.key = seed
    env = wrap_env(RayVectorEnv(envs, per_worker, seed=seed + 7919 * state["done"], **env_options), wrapper="gymnasium")
    network = [{"name": "net", "input": "OBSERVATIONS", "layers": [64, 64], "activations": "tanh"}]
    models = {"policy": shared_policy_model(env.observation_space, env.action_space, env.device),
              "value": deterministic_model(observation_space=env.observation_space, action_space=env.action_space,
                                           device=env.device, network=network, output="ONE")}
    for role, model in models.items():
        model.init_state_dict(role=role)
    memory = RandomMemory(memory_size=rollouts, num_envs=env.num_envs, device=env.device)
    cfg = PPO_CFG(rollouts=rollouts, learning_epochs=6, mini_batches=4, learning_rate=learning_rate,
                  discount_factor=0.8, entropy_loss_scale=0.0, value_preprocessor=RunningStandardScaler,
                  value_preprocessor_kwargs={"size": 1, "device": env.device})
    cfg.experiment.directory = str(directory)
    cfg.experiment.write_interval = 0
    cfg.experiment.checkpoint_interval = 0
    agent = PPO(models=models, memory=memory, observation_space=env.observation_space,
                action_space=env.action_space, device=env.device, cfg=cfg)
    original = env.step
    trainer = None
    try:
        if state["done"]:
            try:
                agent.load(str(checkpoint))
            except Exception as exc:  # pickle and flax raise many kinds for a truncated or foreign file
                raise ClusterError(f"{checkpoint}: not a checkpoint this code can resume ({type(exc).__name__}: "
                                   f"{exc}); start afresh (--fresh) or use another --dir") from None
        while state["done"] < timesteps:
            segment = min(checkpoint_every, timesteps - state["done"])
            started = time.perf_counter()
            rewards, good, worst = [], [], []

            def recording(actions):
                out = original(actions)
                rewards.append(float(np.mean(np.asarray(out[1]))))
                good.append(float(np.mean(out[4]["good"])))
                worst.append(float(np.mean(out[4]["worst"])))
                return out

            env.step = recording
            if trainer is None:
                # one trainer for every segment: building one calls the agent's init, which wraps its
                # networks' apply in jax.jit again, and by the 40th segment the nested wrappers made
                # each segment take minutes (inspecting their signatures recursively) instead of seconds
                trainer = SequentialTrainer(cfg={"timesteps": segment, "headless": True, "disable_progressbar": True,
                                                 "close_environment_at_exit": False},
                                            env=env, agents=agent)
            trainer.cfg.timesteps = segment
            trainer.train()
            env.step = original
            saved = directory / f"checkpoint-{state['done'] + segment}.pickle"
            staged = saved.with_name(f".{saved.name}.partial")
            agent.save(str(staged))
            os.replace(staged, saved)
            state["done"] += segment
            state["checkpoint"] = saved.name
            state["steps"].append(state["done"] * envs * per_worker)
            state["rewards"].append(float(np.mean(rewards)))
            state["good"].append(float(np.mean(good)))
            state["worst"].append(float(np.mean(worst)))
            state["seconds"] += time.perf_counter() - started
            export(models["policy"], directory / "rl_policy.npz", slow_features)
            (directory / "snapshots").mkdir(exist_ok=True)
            export(models["policy"], directory / "snapshots" / f"rl_policy_{state['done'] * envs * per_worker}.npz",
                   slow_features)
            write_file(state_path, json.dumps(state, indent=1), "training progress")  # the segment counts from here
            _remove_checkpoints(directory, keep=saved.name)
            checkpoint = saved
            if progress:
                progress(state["done"], timesteps)
    finally:
        env.step = original
        env.close()
    state["envs"] = envs
    state["per_worker"] = per_worker
    state["weights"] = str(export(models["policy"], directory / "rl_policy.npz", slow_features))
    return state


def _read_progress(path):
    """The state a :func:`train` run recorded in ``path`` (``progress.json``), or a :class:`ClusterError`
    naming the file."""
    try:
        state = json.loads(read_text(path, "a training progress file (JSON text)"), object_pairs_hook=unique_pairs)
    except TcloudError as exc:
        raise ClusterError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ClusterError(f"{path}:{exc.lineno}: not JSON ({exc.msg}); start afresh (--fresh) or use another "
                           f"--dir") from None
    except ValueError as exc:
        raise ClusterError(f"{path}: not a training progress file ({exc}); start afresh (--fresh) or use another "
                           f"--dir") from None
    if not isinstance(state, dict):
        raise ClusterError(f"{path}: not a training progress file (a JSON object); start afresh (--fresh) or use "
                           f"another --dir")
    return state


def _remove_checkpoints(directory, keep):
    """Remove the checkpoints in ``directory`` (and partial ones) but ``keep``, the one its record names:
    those of segments an interruption left unrecorded, or recorded before."""
    for path in [*directory.glob("checkpoint*.pickle"), *directory.glob(".checkpoint*.pickle.partial")]:
        if path.name != keep:
            path.unlink(missing_ok=True)


def _move_aside(directory):
    """Move an earlier run's record, checkpoints and snapshots in ``directory`` to a new
    ``before-<date-time>-<suffix>/`` (two fresh starts in one second do not meet)."""
    earlier = [path for pattern in ("progress.json", "checkpoint*.pickle", ".checkpoint*.pickle.partial", "snapshots")
               for path in directory.glob(pattern)]
    if earlier:
        aside = Path(tempfile.mkdtemp(prefix=f"before-{time.strftime('%Y%m%d-%H%M%S')}-", dir=directory))
        for path in earlier:
            path.rename(aside / path.name)


LEGACY_CHECKPOINT = "checkpoint.pickle"
"""The checkpoint of a run whose ``progress.json`` names none (written before it did)."""
_CHECKPOINT_NAME = re.compile(r"checkpoint-\d+\.pickle")


def _check_progress(path, state):
    """Raise a :class:`ClusterError` naming ``path`` unless ``state`` holds what a run records."""
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0

    def numbers(value):
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)

    checks = {"done": lambda v: number(v) and isinstance(v, int), "seconds": number, "steps": numbers,
              "rewards": numbers, "good": numbers, "worst": numbers}
    bad = [name for name, check in checks.items() if not check(state.get(name))]
    if bad:
        raise ClusterError(f"{path}: not a training progress file (field {bad[0]!r} is missing or of the wrong "
                           f"type); start afresh (--fresh) or use another --dir")
    if "checkpoint" in state and not (isinstance(state["checkpoint"], str)
                                      and _CHECKPOINT_NAME.fullmatch(state["checkpoint"])):
        raise ClusterError(f"{path}: not a training progress file (field 'checkpoint' must name a checkpoint-<steps>"
                           f".pickle file of its directory, got {state['checkpoint']!r}); start afresh (--fresh) or "
                           f"use another --dir")
    segments = {len(state[name]) for name in ("steps", "rewards", "good", "worst")}
    if len(segments) != 1 or (state["done"] > 0 and 0 in segments):
        raise ClusterError(f"{path}: not a training progress file (steps, rewards, good and worst must hold one "
                           f"entry per segment trained); start afresh (--fresh) or use another --dir")


def stamp_format(directory):
    """Write :data:`~.rl.NETWORK_FORMAT` into the weight files of the training run in ``directory``
    (``rl_policy.npz``, ``snapshots/rl_policy_<steps>.npz``) that lack it, if its ``progress.json``
    records this format: such files were written before weight files recorded their format, by code
    of the format the run records. Files of other runs are left as they are (and refused on loading).

    Returns
    -------
    list of pathlib.Path
        The files stamped now.
    """
    directory = Path(directory)
    try:
        recorded = json.loads((directory / "progress.json").read_text())["settings"]["network"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if recorded != network_settings():
        return []
    stamped = []
    for path in [directory / "rl_policy.npz", *sorted((directory / "snapshots").glob("rl_policy_*.npz"))]:
        try:
            with np.load(path) as data:
                if "format" in data.files:
                    continue
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, TypeError, AttributeError, zipfile.BadZipFile):
            continue  # missing, truncated or not a weight file: loading it will say so
        write_file(path, _npz(format=np.int64(NETWORK_FORMAT), **arrays), "weight file")
        stamped.append(path)
    return stamped


def export(policy, path, slow_features=True):
    """Write the shared network of ``policy`` (:func:`shared_policy_model`; the Gaussian mean) as
    ``w0, b0, w1, b1, ...``, its ``format`` (:data:`~.rl.NETWORK_FORMAT`) and, for a network trained
    without the slow estimate's features, ``slow_features`` (false) in ``path``, the file
    :class:`~.rl.ShippedPolicy` reads."""
    params = policy.state_dict.params["params"]
    names = sorted((k for k in params if k.startswith("layer_")), key=lambda k: int(k.split("_")[-1]))
    arrays = {}
    for i, name in enumerate(names):
        arrays[f"w{i}"] = np.asarray(params[name]["kernel"], dtype=np.float32)
        arrays[f"b{i}"] = np.asarray(params[name]["bias"], dtype=np.float32)
    if not slow_features:
        arrays["slow_features"] = np.bool_(False)
    return write_file(path, _npz(format=np.int64(NETWORK_FORMAT), **arrays), "weight file")


def _npz(**arrays):
    """The bytes of an ``.npz`` file holding ``arrays``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def learning_curve(directory, state, episodes=6, points=12,
                   baselines=("static", "clipper", "triton", "nexus", "rl-floor"), progress=None):
    """Score the policy snapshots of a :func:`train` run in ``directory`` (at most ``points`` of
    them, evenly spaced, the last included) and the baselines with :func:`evaluate` on the same
    ``episodes`` episodes of the run's environment; the policies act deterministically.
    ``rl-floor`` is the decode rule with the all-zero action (:class:`~.rl.FloorRule`): what the
    network adds is the snapshots' gain over it.

    Returns
    -------
    dict
        ``steps``, ``reward``, ``good`` and ``worst`` of the snapshots, and ``baselines``: name →
        result.
    """
    from .policies import make_policy
    from .rl import ShippedPolicy

    env = {k: tuple(v) if isinstance(v, list) else v for k, v in state["settings"]["env"].items()}
    found = sorted((int(p.stem.rsplit("_", 1)[-1]), p) for p in (Path(directory) / "snapshots").glob("rl_policy_*.npz"))
    if len(found) > points:
        keep = {round(i * (len(found) - 1) / (points - 1)) for i in range(points)}
        found = [f for i, f in enumerate(found) if i in keep]
    out = {"episodes": episodes, "steps": [], "reward": [], "good": [], "worst": [], "baselines": {}}
    total = len(found) + len(baselines)
    for steps, path in found:
        score = evaluate(ShippedPolicy(path), episodes, **env)
        out["steps"].append(steps)
        out["reward"].append(score["reward"])
        out["good"].append(score["good"])
        out["worst"].append(score["worst"])
        if progress:
            progress(len(out["steps"]), total)
    for name in baselines:
        out["baselines"][name] = evaluate(make_policy(name), episodes, **env)
        if progress:
            progress(len(out["steps"]) + len(out["baselines"]), total)
    return out


def write_curve(state, path, evaluation=None):
    """Write the learning curve of :func:`train`'s ``state`` (and :func:`learning_curve`'s
    ``evaluation``) as JSON at ``path`` and a PNG beside it: mean reward per segment against
    environment steps, the snapshots' deterministic reward and the baselines' on the same episodes;
    return both paths."""
    path = Path(path)
    keys = ("steps", "rewards", "good", "worst", "seconds", "done", "envs", "per_worker", "settings")
    data = {k: state[k] for k in keys if k in state}
    if evaluation:
        data["evaluation"] = evaluation
    write_file(path, json.dumps(data, indent=1) + "\n", "learning curve")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(state["steps"], state["rewards"], color="tab:blue", alpha=0.5, label="training reward (sampled actions)")
    if evaluation:
        ax.plot(evaluation["steps"], evaluation["reward"], color="tab:blue", marker="o",
                label=f"RL, mean action ({evaluation['episodes']} fixed episodes)")
        for (name, score), color in zip(evaluation["baselines"].items(), ("grey", "tab:orange", "tab:green",
                                                                           "tab:red", "black")):
            ax.axhline(score["reward"], color=color, linestyle="--", label=f"{name} (same episodes)")
    ax.set_xlabel("environment steps (all workers)")
    ax.set_ylabel("reward per step (within SLO − worst model's shortfall − cost)")
    ax.set_title(f"RL training: skrl PPO, {state.get('envs', '?')} Ray workers × {state.get('per_worker', 1)} "
                 f"environments, {state['seconds'] / 60:.0f} min")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return [path, write_figure(fig, path.with_suffix(".png"), "learning curve plot")]
