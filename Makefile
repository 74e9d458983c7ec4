# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (once; again only when setup.cfg or constraints.txt change) and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
DEMO_OUT ?= outputs/demo

.PHONY: demo test lint clean

$(STAMP): setup.cfg constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,sagemaker]'
	touch $(STAMP)

$(SAMPLE)/.complete: | $(STAMP)
	rm -rf $(SAMPLE)
	$(BIN)/python scripts/make_sample_data.py --out $(SAMPLE)/train --videos 4 --frames 60 --height 240 --width 426
	$(BIN)/python scripts/make_sample_data.py --out $(SAMPLE)/val --videos 1 --frames 24 --first_video 5 --height 240 --width 426
	touch $@

demo: $(STAMP) $(SAMPLE)/.complete
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml scripts/pretrain.py \
		--recipe demo --train_data $(SAMPLE)/train --val_data $(SAMPLE)/val --output_dir $(DEMO_OUT) --resume auto

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check endovit scripts tests

clean:
	rm -rf $(VENV) data outputs
