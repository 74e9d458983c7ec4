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

# The demo starts where users start: Cholec80-layout videos (videos/videoNN.mp4 at 25 fps + phase_annotations/,
# tool_annotations/) for pretraining, validation and the probe, from one synthetic hospital (phases, instruments,
# sensor noise), as EndoViT pretrains on the videos its downstream tasks come from; the probe's 64 videos are never
# trained on. Each is prepared from video at prepare_data.py's default 1 fps, EndoViT's rate: the synthetic scene
# changes once a second, so a higher rate would only repeat frames, and Cholec80's tool annotations exist for every
# 25th frame only. The segmentation probe's frames come in CholecSeg8k's layout, as it is distributed.
SAMPLE_SOURCES = scripts/make_sample_data.py scripts/prepare_data.py $(addprefix endovit/data/,synthetic.py \
	synthetic_video.py synthetic_seg.py cholec80.py cholecseg8k.py prepare.py prepare_inputs.py video.py frames.py \
	store.py)
$(SAMPLE)/.complete: Makefile $(SAMPLE_SOURCES) | $(STAMP)
	rm -rf $(SAMPLE)
	$(BIN)/python scripts/make_sample_data.py --demo --out $(SAMPLE)
	$(BIN)/python scripts/prepare_data.py --input $(SAMPLE)/train --out $(SAMPLE)/prepared/train
	$(BIN)/python scripts/prepare_data.py --input $(SAMPLE)/val --out $(SAMPLE)/prepared/val
	$(BIN)/python scripts/prepare_data.py --input $(SAMPLE)/probe --out $(SAMPLE)/prepared/probe
	touch $@

# One process on every physical core (accelerate's own pick, with a warning, when not told); OMP_NUM_THREADS wins.
CPU_LAUNCH = $(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process \
	$${OMP_NUM_THREADS:-$$($(BIN)/python -c 'import psutil; print(psutil.cpu_count(logical=False) or 1)')}

demo: $(STAMP) $(SAMPLE)/.complete
	$(CPU_LAUNCH) scripts/pretrain.py \
		--recipe demo --train_data $(SAMPLE)/prepared/train --val_data $(SAMPLE)/prepared/val --output_dir $(DEMO_OUT) \
		--resume auto --probe_data $(SAMPLE)/prepared/probe --probe_labels $(SAMPLE)/probe --probe_frame_step 2 \
		--probe_label_format cholec80_tool --probe_every_steps 105 --probe_best_metric knn_avg_map
	$(CPU_LAUNCH) scripts/evaluate.py \
		--weights $(DEMO_OUT) random random:1 random:2 --data $(SAMPLE)/prepared/probe --labels $(SAMPLE)/probe \
		--label_format cholec80_tool --kind both --output $(DEMO_OUT)/probe.json
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
