# Every target creates the virtual environment it needs (.venv, from requirements.txt
# pinned by constraints.txt).
PY      := .venv/bin/python
DATA    ?= data/imagenet
TEACHER ?=
TOY     := data/toy
ARGS    ?=

.PHONY: install test demo bench resnet50-all-tricks teacher table3 table4 table5 table6 clean

install: .venv/.installed

.venv/.installed: requirements.txt constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

test: install
	$(PY) -m pytest -q tests

$(TOY)/.complete: | install
	$(PY) scripts/make_toy_data.py $(TOY)

demo: install $(TOY)/.complete
	$(PY) train.py recipes/demo.yaml data.root=$(TOY) $(ARGS)

bench: install
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_loader.py

clean:
	rm -rf .venv runs $(TOY)
