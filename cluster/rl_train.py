"""Training the RL policy: a gymnasium environment, Ray rollout workers and skrl's PPO (JAX).

* :class:`ClusterEnv` — a gymnasium environment around :class:`~.simulate.Simulator` on a small
  cluster; one step is one control interval; reward per interval: requests served within SLO over
  requests offered, minus ``cost_weight`` × the share of the cluster's engines held (pay-as-you-go).
* :class:`RayVectorEnv` — several :class:`ClusterEnv` in Ray actors behind gymnasium's vector API
  (autoreset), so rollouts run on Ray workers.
* :func:`train` — skrl PPO, checkpointed and resumable; :func:`export` writes the policy's mean
  network as an ``.npz`` that :class:`~.rl.ShippedPolicy` runs with NumPy alone.

Why skrl with JAX: stable-baselines3 and sbx-rl depend on PyTorch, whose default wheel pulls CUDA
libraries (gigabytes); ``skrl[jax]`` added 534 MB to this project's environment (1,097 → 1,631 MB,
installed in 25 s on the 2-core machine) and no PyTorch.
"""

import json
import time
from pathlib import Path

import gymnasium
import numpy as np

from .policies import Policy
from .rl import PER_MODEL, decode, features, initial_plan, model_options


class _Driven(Policy):
    """The policy inside :class:`ClusterEnv`: starts as :func:`initial_plan`; the environment's
    actions make the later plans."""

    name = "rl"

    def reset(self, context):
        return initial_plan(context)


class ClusterEnv(gymnasium.Env):
    """A gymnasium environment: one step is one control interval of a small simulated cluster.

    Parameters
    ----------
    nodes, pnpus_per_node : int
    interval : float
        Simulated seconds per step.
    steps : int
        Steps per episode (then ``truncated``).
    loads : (float, float)
        Each episode draws its load uniformly from this range and its trace from poisson, mmpp and
        diurnal.
    cost_weight : float
    seed : int
    """

    def __init__(self, nodes=2, pnpus_per_node=4, interval=0.25, steps=16, loads=(0.3, 1.1), cost_weight=0.2,
                 seed=0):
        from .service import load_table
        from .workload import DEFAULT_MODELS

        self.models, self.table = DEFAULT_MODELS, load_table(build=False)
        self.nodes, self.pnpus_per_node, self.interval, self.steps = nodes, pnpus_per_node, interval, steps
        self.loads, self.cost_weight = loads, cost_weight
        self.rng = np.random.default_rng(seed)
        size = len(self.models) * PER_MODEL + 1
        self.observation_space = gymnasium.spaces.Box(-10, 10, (size,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (2 * len(self.models),), np.float32)

    def reset(self, seed=None, options=None):
        from .placement import Cluster
        from .simulate import Simulator, make_context
        from .workload import Arrivals, make_trace

        if seed is not None:
            self.rng = np.random.default_rng(seed)
        load = float(self.rng.uniform(*self.loads))
        trace = str(self.rng.choice(["poisson", "mmpp", "diurnal"]))
        episode_seed = int(self.rng.integers(1 << 30))
        pnpus = self.nodes * self.pnpus_per_node
        self.context = make_context(self.models, self.table, pnpus, load, self.interval)
        self.options = model_options(self.context)
        duration = self.interval * (self.steps + 1)
        arrivals = Arrivals(make_trace(trace, self.models, duration, episode_seed), self.context.rates, episode_seed)
        self.sim = Simulator(self.context, Cluster(self.nodes, self.pnpus_per_node, self.table.config), _Driven(),
                             arrivals)
        self.sim.policy.decide = lambda observation: None
        self.t = 0
        self.sim.step()
        self.observation = self.sim.observe_last
        return features(self.observation, self.context, self.options), {"load": load, "trace": trace}

    def step(self, action):
        self.sim.apply(decode(action, self.observation, self.context, self.options))
        self.sim.step()
        self.observation = self.sim.observe_last
        self.t += 1
        offered = max(float(self.observation["arrival_rate"].sum()) * self.interval, 1.0)
        good = float(self.observation["good"].sum()) / offered
        whole = self.context.shapes[-1]
        held = 1 - self.observation["free_ves"] / (whole.ves * self.context.pnpus)
        reward = good - self.cost_weight * held
        return (features(self.observation, self.context, self.options), float(reward), False, self.t >= self.steps,
                {"good": good, "held": held})


class RayVectorEnv(gymnasium.vector.VectorEnv):
    """``count`` :class:`ClusterEnv` instances in Ray actors, stepped in parallel; an episode that
    ends is reset in its actor at once (the observation returned is the new episode's first).

    Parameters
    ----------
    count : int
    env_options : dict
        Keyword arguments of :class:`ClusterEnv` (each actor gets ``seed + index``).
    """

    def __init__(self, count=2, **env_options):
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=count, include_dashboard=False, log_to_driver=False, configure_logging=False)

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self, options):
                self.env = ClusterEnv(**options)

            def reset(self, seed):
                return self.env.reset(seed=seed)

            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                if terminated or truncated:
                    obs, _ = self.env.reset()
                return obs, reward, terminated, truncated, info

        self._ray = ray
        seed = env_options.pop("seed", 0)
        self.workers = [Worker.remote({**env_options, "seed": seed + i}) for i in range(count)]
        probe = ClusterEnv(**env_options)
        self.num_envs = count
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        self.observation_space = gymnasium.vector.utils.batch_space(probe.observation_space, count)
        self.action_space = gymnasium.vector.utils.batch_space(probe.action_space, count)

    def reset(self, seed=None, options=None):
        results = self._ray.get([w.reset.remote(None if seed is None else seed + i) for i, w in enumerate(self.workers)])
        return np.stack([r[0] for r in results]), {}

    def step(self, actions):
        results = self._ray.get([w.step.remote(a) for w, a in zip(self.workers, np.asarray(actions))])
        obs, reward, terminated, truncated, infos = zip(*results)
        return (np.stack(obs), np.array(reward, dtype=np.float32), np.array(terminated), np.array(truncated),
                {"good": np.array([i["good"] for i in infos]), "held": np.array([i["held"] for i in infos])})

    def close(self, **kwargs):
        for worker in self.workers:
            self._ray.kill(worker)


def train(directory, timesteps=256, envs=2, checkpoint_every=64, seed=0, resume=True, progress=None, **env_options):
    """Train the RL policy with skrl's PPO (JAX) on ``envs`` Ray workers.

    Parameters
    ----------
    directory : path
        Where checkpoints (``checkpoint.pickle`` + ``progress.json``) and the exported weights go.
    timesteps : int
        Environment steps per worker in total.
    checkpoint_every : int
        Steps between two checkpoints; an interrupted run resumes from the last one (``resume``).
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    dict
        ``timesteps`` done, wall ``seconds``, mean reward of each segment and the weights path.
    """
    from skrl import config as skrl_config
    from skrl.agents.jax.ppo import PPO, PPO_CFG
    from skrl.envs.wrappers.jax import wrap_env
    from skrl.memories.jax import RandomMemory
    from skrl.trainers.jax import SequentialTrainer
    from skrl.utils.model_instantiators.jax import deterministic_model, gaussian_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path, checkpoint = directory / "progress.json", directory / "checkpoint.pickle"
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else {"done": 0, "rewards": [],
                                                                                        "seconds": 0.0}
    skrl_config.jax.key = seed
    env = wrap_env(RayVectorEnv(envs, seed=seed + state["done"], **env_options), wrapper="gymnasium")
    network = [{"name": "net", "input": "OBSERVATIONS", "layers": [64, 64], "activations": "tanh"}]
    models = {"policy": gaussian_model(observation_space=env.observation_space, action_space=env.action_space,
                                       device=env.device, clip_actions=True, initial_log_std=-0.5, network=network,
                                       output="ACTIONS"),
              "value": deterministic_model(observation_space=env.observation_space, action_space=env.action_space,
                                           device=env.device, network=network, output="ONE")}
    for role, model in models.items():
        model.init_state_dict(role=role)
    rollouts = 16
    memory = RandomMemory(memory_size=rollouts, num_envs=env.num_envs, device=env.device)
    cfg = PPO_CFG(rollouts=rollouts, learning_epochs=4, mini_batches=2, learning_rate=3e-4, entropy_loss_scale=0.0)
    cfg.experiment.directory = str(directory)
    cfg.experiment.write_interval = 0
    cfg.experiment.checkpoint_interval = 0
    agent = PPO(models=models, memory=memory, observation_space=env.observation_space,
                action_space=env.action_space, device=env.device, cfg=cfg)
    if resume and checkpoint.exists():
        agent.load(str(checkpoint))
    try:
        while state["done"] < timesteps:
            segment = min(checkpoint_every, timesteps - state["done"])
            started = time.perf_counter()
            rewards = []
            original = env.step

            def recording(actions):
                out = original(actions)
                rewards.append(float(np.mean(np.asarray(out[1]))))
                return out

            env.step = recording
            trainer = SequentialTrainer(cfg={"timesteps": segment, "headless": True, "disable_progressbar": True,
                                             "close_environment_at_exit": False},
                                        env=env, agents=agent)
            trainer.train()
            env.step = original
            agent.save(str(checkpoint))
            state["done"] += segment
            state["rewards"].append(float(np.mean(rewards)) if rewards else None)
            state["seconds"] += time.perf_counter() - started
            state_path.write_text(json.dumps(state, indent=1))
            if progress:
                progress(state["done"], timesteps)
    finally:
        env.close()
    state["weights"] = str(export(models["policy"], directory / "rl_policy.npz"))
    return state


def export(policy, path):
    """Write ``policy``'s dense layers (the Gaussian mean) as ``w0, b0, w1, b1, ...`` in ``path``."""
    params = policy.state_dict.params["params"]["net_container"]
    names = sorted(params, key=lambda k: int(k.split("_")[-1]))
    arrays = {}
    for i, name in enumerate(names):
        arrays[f"w{i}"] = np.asarray(params[name]["kernel"], dtype=np.float32)
        arrays[f"b{i}"] = np.asarray(params[name]["bias"], dtype=np.float32)
    path = Path(path)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path
