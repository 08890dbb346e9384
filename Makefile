# The two commands of the README. Each sets up a fresh machine first (scripts/bootstrap.sh).
.PHONY: setup run demo test bench

setup:
	scripts/bootstrap.sh

# The main job on the embedded default model.
run: setup
	. .venv/bin/activate && HF_HUB_OFFLINE=1 python -m bastion generate --compare "Write a Python function that checks whether a number is prime."

# Tree building alone: a tree from a draft distribution, printed and timed (C++ vs oracle).
demo: setup
	. .venv/bin/activate && HF_HUB_OFFLINE=1 python -m bastion.demo

# The whole test suite (what CI runs).
test: setup
	. .venv/bin/activate && HF_HUB_OFFLINE=1 python -m pytest tests -q -p no:cacheprovider

bench: setup
	. .venv/bin/activate && HF_HUB_OFFLINE=1 python -m pytest bench/bench_build_tree.py --benchmark-json=bench/results/build_tree_cpu.json
