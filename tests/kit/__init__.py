"""The test kit: what the tests and the benchmarks (bench/) share, never installed with the product.

- ``kit.faults``: the fault suite's harness (a known workload through the real bus, a fault, an exact account),
  the processes it runs (``python -m kit.faults``), one ``free_port``, one process wrapper (``Proc``);
- ``kit.scripted``: the scripted incidents a-j of docs/scenarios.md as source events with their ground truth;
- ``kit.synthetic``: plain records of every kind in bulk, for the store's tests and benchmarks.

The tests find it on ``sys.path`` (pytest puts ``tests/`` there); the benchmarks and the kit's own child
processes put ``tests/`` there themselves (``kit.faults.kit_env``).
"""
