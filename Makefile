# The two commands of the README's Quickstart. Each sets up what it needs on a fresh machine:
# a .venv with medzero and its dependencies, and (for the tests) the apt tools that make test audio.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medzero-installed
# espeak-ng, sox, ffmpeg make test audio; chromium drives the browser tests; the CJK font renders
# the Chinese labels in their screenshots; orthanc is the PACS the DICOMweb/DIMSE tests talk to.
APT_PACKAGES := espeak-ng sox ffmpeg chromium fonts-noto-cjk orthanc orthanc-dicomweb
# Every optional feature is a pip extra; the tests cover them all, so set-up installs them all.
EXTRAS := dev,pacs,serve,ray,onnx,openvino,voice,postgres
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: app test bench system-deps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

test: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

app: $(STAMP)
	$(VENV)/bin/medzero app

bench: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 $(PY) bench/bench_audio.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_image.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_retrieval.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_app.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
