# Every target creates the virtual environment it needs (.venv, from requirements.txt
# pinned by constraints.txt).
PY      := .venv/bin/python
DATA    ?= data/imagenet
TEACHER ?=
TOY     := data/toy
ARGS    ?=

.PHONY: install test demo demo-recipe demo-finetune shards bench resnet50-all-tricks teacher table3 table4 table5 table6 clean

install: .venv/.installed

.venv/.installed: requirements.txt constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

# Two test processes (pytest-xdist; a process that runs out of tests takes half of the other's),
# one torch thread each: the tests' networks are too small to gain from a second thread, and the
# suite's own processes (runs stopped and resumed, torchrun's workers) share the cores.
# TEST_WORKERS=auto: a process per core; TEST_WORKERS=0: one process (docs/testing.md).
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist worksteal --durations=15

# Mutation testing (docs/testing.md): mutmut mutates the 12 files pyproject.toml's [tool.mutmut]
# names (the paper's formulas, the loaders' draws, sampling, shards, the networks) and runs the fast
# in-process tests against each mutant, then prints the score per file. mutmut is not in
# requirements.txt: this target installs it, at constraints.txt's pin. About 25 minutes on 2 cores.
.PHONY: mutation
mutation: install
	$(PY) -m pip install --quiet mutmut -c constraints.txt
	rm -rf mutants
	OMP_NUM_THREADS=1 nice $(PY) -m mutmut run --max-children 2
	$(PY) -m mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	$(PY) scripts/mutation_report.py

$(TOY)/.complete: | install
	$(PY) scripts/make_toy_data.py $(TOY)

# The demo: the ablation grid of Tables 3 and 6 shrunk for the CPU, on the toy data, three
# seeds per row, ending with its table (runs/demo-grid/table.md: mean +- std, deltas within
# the seeds' noise marked ~). ARGS reach ablate.py after --seeds 3, e.g. ARGS='--seeds 5'.
demo: install $(TOY)/.complete
	$(PY) scripts/ablate.py recipes/ablations/demo.yaml data.root=$(TOY) --seeds 3 $(ARGS)

# One run of recipes/demo.yaml (every trick but mixup and distillation): about 3 minutes.
demo-recipe: install $(TOY)/.complete
	$(PY) train.py recipes/demo.yaml data.root=$(TOY) $(ARGS)

# Fine-tuning: the demo-recipe model (trained first if runs/demo has no summary) fine-tuned on
# 5 new toy classes, and the same recipe from scratch, both 10 epochs; prints both top-1.
TOY_NEW := data/toy-new

$(TOY_NEW)/.complete: | install
	$(PY) scripts/make_toy_data.py $(TOY_NEW) --classes 5 --first-shape 5 --train 30 --val 50 --seed 1

runs/demo/summary.json: | install $(TOY)/.complete
	$(PY) train.py recipes/demo.yaml data.root=$(TOY) run.out=runs/demo

demo-finetune: install $(TOY_NEW)/.complete runs/demo/summary.json
	$(PY) train.py recipes/finetune-demo.yaml data.root=$(TOY_NEW) $(ARGS)
	$(PY) train.py recipes/finetune-demo.yaml data.root=$(TOY_NEW) model.init_from=null \
		run.out=runs/finetune-demo-scratch $(ARGS)
	@for d in finetune-demo finetune-demo-scratch; do $(PY) -c "import json, sys; \
		print(f'{sys.argv[1]}: top-1 {json.load(open(sys.argv[1]))[\"top1\"]:.2f}')" runs/$$d/summary.json; done

# ImageNet (DATA) as WebDataset shards (SHARDS), for clusters and object stores (docs/data.md,
# "Shards"); ARGS reach make_shards.py, e.g. ARGS='--shard-mb 128'. Then train with data.root=$(SHARDS).
SHARDS ?= $(DATA)-wds

shards: install
	$(PY) scripts/make_shards.py $(DATA) $(SHARDS) $(ARGS)

# The distillation teacher, ResNet-152-D with cosine + label smoothing (section 5.3).
# Its summary.json marks it finished, so it is trained once. It gets ARGS when made by
# teacher or resnet50-all-tricks (train.py overrides), only TEACHER_ARGS under table6.
teacher: runs/resnet152-d-teacher/summary.json

teacher resnet50-all-tricks: TEACHER_ARGS += $(ARGS)

runs/resnet152-d-teacher/summary.json: | install
	$(PY) train.py recipes/resnet152-d-teacher.yaml data.root=$(DATA) run.out=runs/resnet152-d-teacher $(TEACHER_ARGS)

# Table 6's last row. Without TEACHER=path/to/best.pt the teacher above is trained first.
resnet50-all-tricks: install $(if $(TEACHER),,runs/resnet152-d-teacher/summary.json)
	$(PY) train.py recipes/resnet50-all-tricks.yaml data.root=$(DATA) \
		loss.distill_teacher=$(or $(TEACHER),runs/resnet152-d-teacher/best.pt) $(ARGS)

# The paper's ablation tables: runs/tableN/table.md, table.csv, curves.png, lr.png.
# ARGS reach ablate.py, e.g. ARGS='--seeds 3 --launcher "accelerate launch --config_file configs/accelerate/8gpu.yaml"'.
# Table 6's distillation rows read runs/resnet152-d-teacher/best.pt, trained first.
table3 table4 table5: install
	$(PY) scripts/ablate.py recipes/ablations/$@.yaml data.root=$(DATA) $(ARGS)

table6: install runs/resnet152-d-teacher/summary.json
	$(PY) scripts/ablate.py recipes/ablations/$@.yaml data.root=$(DATA) $(ARGS)

# Table 2: the section 2 baseline on ResNet-50, Inception-V3 and MobileNet v1, beside the
# reference implementations' published figures (one grid, a column per network).
.PHONY: table2 demo-networks
table2: install
	$(PY) scripts/ablate.py recipes/ablations/$@.yaml data.root=$(DATA) $(ARGS)

# Table 6's layout on the toy data: ResNet-18-D beside MobileNet v1 at 32 px, three refinements,
# one seed: 8 minutes on 2 idle cores.
demo-networks: install $(TOY)/.complete
	$(PY) scripts/ablate.py recipes/ablations/demo-networks.yaml data.root=$(TOY) $(ARGS)
	@cat runs/demo-networks/table.md

# Beyond the paper on the toy data: every trick, then + CutMix, Cutout, Swish, Mish, random
# shapes or the weight EMA, one per row (recipes/ablations/extras.yaml; README "Beyond the paper").
.PHONY: demo-extras
demo-extras: install $(TOY)/.complete
	$(PY) scripts/ablate.py recipes/ablations/extras.yaml data.root=$(TOY) $(ARGS)
	@cat runs/demo-extras/table.md

# CIFAR-10 (docs/cifar.md). CIFAR is a folder of class folders with train/ and test/, e.g. from the
# official archive: python scripts/prepare_cifar.py cifar-10-python.tar.gz data/cifar10 [--shards].
# cifar10-curve: gluon-cv's ResNet-20 v1 recipe (200 epochs; stop and rerun to resume), then its
# per-epoch top-1 beside gluon-cv's log. cifar10-table: the budget grid (15 epochs a row), 2 seeds.
CIFAR ?= data/cifar10
.PHONY: cifar10-curve cifar10-table
cifar10-curve: install
	$(PY) train.py recipes/cifar10/resnet20-v1.yaml data.root=$(CIFAR) run.out=runs/cifar10-resnet20-v1 $(ARGS)
	$(PY) scripts/compare_log.py runs/cifar10-resnet20-v1 docs/cifar/gluoncv_cifar_resnet20_v1.csv \
		--out runs/cifar10-resnet20-v1/curve.png

cifar10-table: install
	$(PY) scripts/ablate.py recipes/ablations/cifar10-budget.yaml data.root=$(CIFAR) --seeds 2 $(ARGS)

# An ImageNet-sized job rehearsed on this machine (docs/distributed.md, "Rehearsal"): ImageNet's
# sample and shard counts as tiny JPEGs in data/rehearse (written once, 2.6 GB, then reused), the real
# commands on them (make_shards --index, train.py under torchrun with 8 CPU processes and ulimit -n
# 1024, SIGTERM and resume, an epoch's end, DALI, evaluate.py); one table of checks, exit 1 if one
# fails. ARGS reach scripts/rehearse.py, e.g. ARGS='--processes 4' where 8 do not fit in memory.
.PHONY: rehearse
rehearse: install
	OMP_NUM_THREADS=1 $(PY) scripts/rehearse.py $(ARGS)

bench: install
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_loader.py

clean:
	rm -rf .venv runs $(TOY)

# One GPU: the training step, the loaders and train.py end to end (docs/gpu.md, docs/benchmarks.md).
bench-gpu: install
	$(PY) scripts/bench_gpu.py

# A lent GPU's check within 8 minutes (docs/gpu.md, "A lent GPU's 15 minutes"): the CUDA tests, the
# step (fp16, bf16, compiled bf16) against the bare loop, the DALI GPU loader and train.py end to
# end, each part time-boxed, every figure in $(OUT)/gpu-check.json and .md as soon as measured.
# No install: on the GPU machine, PY=python3.
OUT ?= gpu-check
.PHONY: gpu-check
gpu-check:
	$(PY) scripts/bench_gpu.py --out $(OUT) --parts tests step loader end-to-end --budget 450 \
		--compile-precisions bf16 --timm eager --rounds 3 --images 4096 --loader-epochs 1 \
		--train-steps 120 --log-every 4 --train-overrides precision=bf16 compile=false

# Smaller, faster models (docs/compress.md): the demo network at half width trained with network
# slimming's L1 penalty, then int8 (onnxruntime), slimmed 30% (every layer a multiple of 8
# channels; + 10 epochs of fine-tuning), slimmed + int8, side by side: runs/compress-demo/table.md;
# then make demo-qat (below). About 3.5 minutes on 2 cores, and demo-qat's 10.6.
.PHONY: demo-compress
runs/compress-demo/summary.json: | install $(TOY)/.complete
	$(PY) train.py recipes/compress-demo.yaml data.root=$(TOY) $(ARGS)

demo-compress: install $(TOY)/.complete runs/compress-demo/summary.json
	$(PY) scripts/quantize.py runs/compress-demo data.root=$(TOY) --calib 256
	$(PY) scripts/slim.py runs/compress-demo --ratio 0.3 --round-to 8 --out runs/compress-demo-slim
	$(PY) train.py recipes/compress-demo-finetune.yaml data.root=$(TOY) $(ARGS)
	$(PY) scripts/quantize.py runs/compress-demo-slim-ft data.root=$(TOY) --calib 256
	$(PY) scripts/compress_report.py data.root=$(TOY) --out runs/compress-demo/table.md \
		fp32=runs/compress-demo/best.pt int8=runs/compress-demo/best.int8.onnx \
		slim-30%=runs/compress-demo-slim/best.pt slim-30%+ft=runs/compress-demo-slim-ft/best.pt \
		slim-30%+ft+int8=runs/compress-demo-slim-ft/best.int8.onnx
	$(MAKE) demo-qat

# Quantization-aware training (docs/compress.md): the demo ResNet (1/4 width, 32 px) and MobileNet v1
# (64 px), each trained 10 epochs in fp32, then 3 more epochs two ways: in fp32, quantized after
# training (onnxruntime's int8, the same with 7-bit weights, and 4-bit weights), and with model.qat
# at 8 and at 4 bits; one table of top-1 and CPU latency: runs/qat-demo/table.md.
# 10.6 minutes with OMP_NUM_THREADS=1 on a 2-core machine shared with other jobs.
.PHONY: demo-qat
FT := optim.lr=0.16 schedule.epochs=3 schedule.warmup_epochs=0
demo-qat: install $(TOY)/.complete
	for net in qat-demo qat-demo-mobilenet; do \
		$(PY) train.py recipes/$$net.yaml data.root=$(TOY) $(ARGS) && \
		$(PY) train.py recipes/$$net.yaml data.root=$(TOY) model.init_from=runs/$$net/best.pt $(FT) \
			run.out=runs/$$net-ft $(ARGS) && \
		$(PY) scripts/quantize.py runs/$$net-ft data.root=$(TOY) --calib 256 --repeats 3 && \
		$(PY) scripts/quantize.py runs/$$net-ft data.root=$(TOY) --calib 256 --repeats 3 --reduce-range \
			--out runs/$$net-ft/best.int7.onnx && \
		$(PY) scripts/quantize.py runs/$$net-ft data.root=$(TOY) --calib 256 --repeats 3 --bits 4 \
			--out runs/$$net-ft/best.int4.onnx || exit 1; \
		for bits in 8 4; do \
			$(PY) train.py recipes/$$net.yaml data.root=$(TOY) model.init_from=runs/$$net/best.pt model.qat=true $(FT) \
				model.qat_bits=$$bits run.out=runs/$$net-qat$$bits $(ARGS) && \
			$(PY) scripts/quantize.py runs/$$net-qat$$bits data.root=$(TOY) --repeats 3 || exit 1; \
		done; \
	done
	$(PY) scripts/compress_report.py data.root=$(TOY) --out runs/qat-demo/table.md \
		resnet-fp32=runs/qat-demo/best.pt resnet-fp32+3ep=runs/qat-demo-ft/best.pt \
		resnet-int8-post=runs/qat-demo-ft/best.int8.onnx resnet-w7-post=runs/qat-demo-ft/best.int7.onnx \
		resnet-w4-post=runs/qat-demo-ft/best.int4.onnx \
		resnet-int8-qat=runs/qat-demo-qat8/best.int8.onnx resnet-w4-qat=runs/qat-demo-qat4/best.int8.onnx \
		mobilenet-fp32=runs/qat-demo-mobilenet/best.pt mobilenet-fp32+3ep=runs/qat-demo-mobilenet-ft/best.pt \
		mobilenet-int8-post=runs/qat-demo-mobilenet-ft/best.int8.onnx \
		mobilenet-w7-post=runs/qat-demo-mobilenet-ft/best.int7.onnx \
		mobilenet-w4-post=runs/qat-demo-mobilenet-ft/best.int4.onnx \
		mobilenet-int8-qat=runs/qat-demo-mobilenet-qat8/best.int8.onnx \
		mobilenet-w4-qat=runs/qat-demo-mobilenet-qat4/best.int8.onnx
