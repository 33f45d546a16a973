"""Cluster serving: many zoo models on many pNPUs, simulated in virtual time.

* :mod:`.workload` — models with SLOs, arrival traces (Poisson, MMPP, diurnal, Azure Functions 2019);
* :mod:`.service` — the service-time table measured on a timed backend (Ray tasks), interpolated;
* :mod:`.placement` — pNPUs and the vNPUs placed on them by the hypervisor's allocator;
* :mod:`.simulate` — the batch-granularity simulator and its metrics; :mod:`.reference` — the
  per-request SimPy simulation that validates it;
* :mod:`.policies` — static, Clipper-, Triton- and Nexus-style policies; :mod:`.rl` — the RL policy
  (NumPy), trained by :mod:`.rl_train` (gymnasium, Ray, skrl);
* :mod:`.cli` — ``tcloud cluster simulate|table|train``.
"""
