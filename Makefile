# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (once; again only when setup.cfg or constraints.txt change) and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
DEMO_OUT ?= outputs/demo

.PHONY: demo test test-wheels lint clean device-wheels

$(STAMP): setup.cfg constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,sagemaker]'
	touch $(STAMP)

# Pretraining, validation and probe frames come from one synthetic hospital (phases, instruments, sensor noise), as
# EndoViT pretrains on the videos its downstream tasks come from; the probe's 64 videos are never trained on.
$(SAMPLE)/.complete: Makefile scripts/make_sample_data.py endovit/data/synthetic.py endovit/data/cholec80.py \
		endovit/data/synthetic_seg.py endovit/data/cholecseg8k.py | \
		$(STAMP)
	rm -rf $(SAMPLE)
	$(BIN)/python scripts/make_sample_data.py --demo --out $(SAMPLE)
	touch $@

# One process on every physical core (accelerate's own pick, with a warning, when not told); OMP_NUM_THREADS wins.
CPU_LAUNCH = $(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process \
	$${OMP_NUM_THREADS:-$$($(BIN)/python -c 'import psutil; print(psutil.cpu_count(logical=False) or 1)')}

demo: $(STAMP) $(SAMPLE)/.complete
	$(CPU_LAUNCH) scripts/pretrain.py \
		--recipe demo --train_data $(SAMPLE)/train --val_data $(SAMPLE)/val --output_dir $(DEMO_OUT) --resume auto \
		--probe_data $(SAMPLE)/probe --probe_frame_step 2 --probe_label_format cholec80_tool --probe_every_steps 105 \
		--probe_best_metric knn_avg_map
	$(CPU_LAUNCH) scripts/evaluate.py \
		--weights $(DEMO_OUT) random random:1 random:2 --data $(SAMPLE)/probe --label_format cholec80_tool --kind both \
		--output $(DEMO_OUT)/probe.json
	$(CPU_LAUNCH) scripts/evaluate.py \
		--weights $(DEMO_OUT) random random:1 random:2 --data $(SAMPLE)/seg --label_format cholecseg8k \
		--output $(DEMO_OUT)/probe_seg.json

# Wheels the GPU machine's image lacks (its Python is 3.12), carried with the tree to the GPU check; and the same
# for this interpreter, for the check's CPU rehearsal in tests/test_device_check.py. Versions from constraints.txt.
DEVICE_WHEELS = $(shell grep -E '^(datasets|dill|multiprocess)==' constraints.txt)
WHEEL_FLAGS = -q --no-deps --only-binary=:all:
device-wheels: .whl-local/.complete
	$(PYTHON) -m pip download $(WHEEL_FLAGS) --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 -d .whl $(DEVICE_WHEELS) $(shell grep -E '^pyarrow==' constraints.txt)

# Also the oldest timm setup.cfg allows, for tests/test_timm_floor.py (both: `make test-wheels`).
TIMM_FLOOR = $(shell sed -n 's/^ *timm>=\([0-9.]*\).*/\1/p' setup.cfg)
.whl-local/.complete: constraints.txt setup.cfg | $(STAMP)
	$(BIN)/python -m pip download $(WHEEL_FLAGS) -d .whl-local $(DEVICE_WHEELS) timm==$(TIMM_FLOOR)
	touch $@

# Two workers, one per core of the 2-core CI machine; a file stays on one worker, so its module fixtures run once;
# files go out longest first (tests/conftest.py's LONGEST_FILES).
# The tests that need downloaded wheels (the GPU check's rehearsal, the timm floor) run in `make test-wheels`.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not wheels"

test-wheels: $(STAMP) .whl-local/.complete
	$(BIN)/python -m pytest -n 2 --dist loadfile -m wheels

lint: $(STAMP)
	$(BIN)/ruff check endovit scripts tests

clean:
	rm -rf $(VENV) data outputs .whl .whl-local
