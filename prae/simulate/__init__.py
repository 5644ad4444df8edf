"""The cluster simulator: policies' allocations on a cluster of slow-starting nodes.

Pure numpy, no Ray. ``prae backtest --simulate-cluster`` replays real traces through the
backtest (forecasts, calibration, baselines), turns every policy's decisions into
per-workload allocations -- PRAE's through the same :class:`~prae.policy.requests.ReservationPlanner`
the live allocator uses -- and replays them on a cluster of identical nodes with an
explicit start-up delay, reporting node-hours, pending demand, slack and resizes.

    cluster.py   the cluster model (nodes wanted, start-up, idle scale-down, serving)
    policies.py  backtest result -> per-workload allocations per policy
    report.py    the same-pending-demand comparison and its table
    cli.py       the ``--simulate-cluster`` options of ``prae backtest``
"""
