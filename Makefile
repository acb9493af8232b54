# The two commands a newcomer runs (see README): `make demo` and `make test`.
# Each creates .venv on first use; later runs reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean image

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tupac demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The container image, `make image VARIANT=gpu` (default) or `VARIANT=cpu`: infra/Dockerfile, tagged
# TUPAC_IMAGE (infra/placeholders.env):<package version>, with -cpu for the CPU variant.
VARIANT ?= gpu
image:
	. infra/placeholders.env && \
	version=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) && \
	tag=$$TUPAC_IMAGE:$$version$$(test "$(VARIANT)" = gpu || echo "-$(VARIANT)") && \
	docker build -f infra/Dockerfile --build-arg VARIANT=$(VARIANT) -t $$tag . && \
	echo "built $$tag (docker push $$tag)"

clean:
	rm -rf demo-out test-artifacts .pytest_cache
