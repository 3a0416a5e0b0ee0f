# distill-cache: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DC := $(VENV)/bin/distill-cache
TORCH_SPEC ?= torch==2.13.0
export TORCH_SPEC

# Where the extract targets read and write; with no root they generate a small synthetic world first.
WORK ?= runs
SCANNET_ROOT ?=
S3DIS_ROOT ?=
CACHE ?= $(WORK)/cache-scannet
CHECKPOINT ?=
TEACHER ?= checkpoint
SYNTH_SCENES ?= 6
SYNTH_FRAMES ?= 24
SYNTH_SIZE ?= 320x240
EXTRACT_FLAGS ?=
TRAIN_FLAGS ?=
RUN ?= $(WORK)/train
PYTEST_FLAGS ?=
GPU_CHECK_FLAGS ?=
# gpu-check runs where no .venv exists too (a lent GPU machine: its python3 holds torch, .whl/ the rest)
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)

# extract's teacher options in the extract recipes: the control, or the checkpoint in their shell variable ckpt
# (when there is none, extract itself says that one is needed)
TEACHER_FLAGS = $(if $(filter label-embedding,$(TEACHER)),--teacher label-embedding,$${ckpt:+--teacher-checkpoint $$ckpt})

.PHONY: help install test lint demo reproduce bench gpu-check gpu-check-dry gpu-wheels extract-scannet extract-s3dis \
	train evaluate clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

install:  ## make .venv with torch ($(TORCH_SPEC)), the package, and MinkowskiEngine (CPU build where no CUDA)
	@bash scripts/install.sh

test: install  ## run the test suite (builds what it needs first)
	$(PY) -m pytest $(PYTEST_FLAGS)

lint: install  ## ruff
	$(VENV)/bin/ruff check .

demo: install  ## the whole pipeline on a small synthetic world -> runs/demo/report.md
	$(PY) -m pipeline.demo --out $(WORK)/demo

reproduce: install  ## the paper's tables on the synthetic world -> runs/reproduce/report.md
	$(PY) -m pipeline.reproduce --out $(WORK)/reproduce

bench: install  ## speed, size and cost against references -> bench/results.json, bench/README.md
	$(PY) -m bench.run

gpu-check:  ## every CUDA path tested and measured on this GPU (<= 8 min) -> gpu_check.json in OUT (runs/gpu-check)
	PYTHON=$(GPU_PY) bash scripts/gpu_check.sh $(GPU_CHECK_FLAGS)

gpu-check-dry: install  ## the same check on the CPU with tiny sizes (make test runs it too)
	PYTHON=$(PY) bash scripts/gpu_check.sh --dry-run $(GPU_CHECK_FLAGS)

gpu-wheels:  ## download into .whl/ the wheels a lent GPU machine lacks for gpu-check (~13 MB)
	PYTHON=$(GPU_PY) bash scripts/gpu_wheels.sh

extract-scannet: install  ## stage one on ScanNet (SCANNET_ROOT=... CACHE=... CHECKPOINT=... or TEACHER=label-embedding; synthetic if no root)
	@set -e; root="$(SCANNET_ROOT)"; ckpt="$(CHECKPOINT)"; \
	if [ -z "$$root" ]; then root=$(WORK)/synth-scannet; \
	  [ -f $$root/.complete ] || { $(DC) synth scannet $$root --scenes $(SYNTH_SCENES) --frames $(SYNTH_FRAMES) --size $(SYNTH_SIZE) --seed 0 && touch $$root/.complete; }; \
	  if [ -z "$$ckpt" ] && [ "$(TEACHER)" != label-embedding ]; then ckpt=$(WORK)/teacher-scannet.pth; \
	    [ -f $$ckpt ] || $(DC) train-teacher --dataset scannet --root $$root --out $$ckpt; fi; fi; \
	$(DC) extract --dataset scannet --root $$root --out $(CACHE) $(TEACHER_FLAGS) $(EXTRACT_FLAGS)

extract-s3dis: install  ## stage one on S3DIS + 2D-3D-S (S3DIS_ROOT=... CACHE=... CHECKPOINT=... or TEACHER=label-embedding; synthetic if no root)
	@set -e; root="$(S3DIS_ROOT)"; ckpt="$(CHECKPOINT)"; cache="$(if $(filter $(CACHE),$(WORK)/cache-scannet),$(WORK)/cache-s3dis,$(CACHE))"; \
	if [ -z "$$root" ]; then root=$(WORK)/synth-s3dis; \
	  [ -f $$root/.complete ] || { $(DC) synth s3dis $$root --scenes $(SYNTH_SCENES) --frames $(SYNTH_FRAMES) --size $(SYNTH_SIZE) --seed 0 && touch $$root/.complete; }; \
	  if [ -z "$$ckpt" ] && [ "$(TEACHER)" != label-embedding ]; then ckpt=$(WORK)/teacher-s3dis.pth; \
	    [ -f $$ckpt ] || $(DC) train-teacher --dataset s3dis --root $$root --out $$ckpt; fi; fi; \
	$(DC) extract --dataset s3dis --root $$root --out $$cache $(TEACHER_FLAGS) $(EXTRACT_FLAGS)

train: install  ## stage two from a cache (CACHE=... RUN=... TRAIN_FLAGS=...)
	$(DC) train --cache $(CACHE) --out $(RUN) $(TRAIN_FLAGS)

evaluate: install  ## evaluate the last checkpoint of RUN on CACHE
	$(DC) evaluate --checkpoint $(RUN)/last.pt --cache $(CACHE)

clean:  ## remove runs/ and caches made by the targets (keeps .venv)
	rm -rf $(WORK) bench/out
