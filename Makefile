# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast bench clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import handclip, torch, open_clip, faiss" 
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/handclip demo --out demo_out

# The tests that assert a learning outcome run once more on other CPU kernels (AVX2, or the scalar ones
# on an AVX2 machine), so every machine checks two kernel families whatever its own CPU.
OTHER_KERNELS = $(BIN)/python -c "import torch; print('default' if torch.backends.cpu.get_cpu_capability() in ('AVX2', 'DEFAULT') else 'avx2')"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --durations=10
	kernels=$$($(OTHER_KERNELS)) && echo "== the learning tests again, ATEN_CPU_CAPABILITY=$$kernels" && \
	ATEN_CPU_CAPABILITY=$$kernels $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m learning

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# The browser test drives Debian's Chromium (Playwright downloads nothing).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache
