# Quick start: `make demo` (issue 4) and `make test`. Each target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
# orthanc-dicomweb: Orthanc's DICOMweb plugin (STOW-RS destinations); g++: torch.compile's CPU code generation
# postgresql: the tests start their own throw-away server (harness/postgres.py)
# chromium, chromium-driver: the status page's browser test (Selenium drives Debian's browser; nothing is downloaded)
DEBIAN_PEERS = dcmtk orthanc orthanc-dicomweb dicom3tools postgresql g++ chromium chromium-driver
# `dpkg -L orthanc-dicomweb` lists this link to the versioned plugin library
DICOMWEB_PLUGIN = /usr/share/orthanc/plugins/libOrthancDicomWeb.so
# constraints.txt is a full lock of the dev/CI venv (torch = the CPU wheel); pyproject.toml keeps honest ranges.
CONSTRAINTS = constraints.txt
# Where torch comes from. PyPI's Linux wheel is a multi-GB CUDA build; PyTorch's CPU index has the CPU wheel of the
# pinned version (2.13.0+cpu satisfies torch==2.13.0). A CUDA machine:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Empty = the pip configuration decides. Only torch itself is looked up there (--no-deps: one lookup, quick even
# offline); its dependencies come with the project, pinned by constraints.txt.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: venv peers demo test bench lint clean help

help:
	@echo "make demo   - install venv (+ dcmtk/orthanc when apt allows) and run one synthetic LD CT study through the node"
	@echo "make test   - install venv + Debian packages ($(DEBIAN_PEERS)) and run the test suite"
	@echo "make bench  - every benchmark at a small size (a few minutes); figures go to docs/benchmarks.md by hand"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml trainer/pyproject.toml harness/pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev,postgresql,jpeg-gpl]' -e './trainer[fanbeam]' -e './harness[bench]'
	touch $@

venv: $(STAMP)

# Debian peers used by the tests (real DICOM peers, not mocks). Skipped when already present or not root.
peers:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -e $(DICOMWEB_PLUGIN) || missing="$$missing orthanc-dicomweb"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The demo works without the Debian peers (pynetdicom SCU, folder receiver), so a failed apt install only warns.
demo: venv
	@$(MAKE) --no-print-directory peers || echo "warning: Debian peers not installed; the demo uses pynetdicom instead"
	TCP_NODELAY=1 $(VENV)/bin/denoise-node demo --out demo-out $(DEMO_ARGS)

test: venv peers
	bash scripts/pytest.sh

# Benchmarks are not tests: each prints ratios measured in one run against its baseline (docs/benchmarks.md).
bench: venv peers
	$(PY) -m bench.inference --slices 2 --filters 32 --tile 272
	$(PY) -m bench.fast_paths --filters 32 --rounds 3
	$(PY) -m bench.self_ensemble --slices 2
	TCP_NODELAY=1 $(PY) -m bench.receive --files 50 --size 512
	TCP_NODELAY=1 $(PY) -m bench.receivers --files 48 --size 512 --receivers 1 2
	TCP_NODELAY=1 $(PY) -m bench.send --files 32 --size 512
	TCP_NODELAY=1 $(PY) -m bench.e2e --slices 16 --size 512 --filters 32
	$(PY) -m bench.train --preset cpu --steps 3

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
