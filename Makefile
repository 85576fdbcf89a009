# Two commands from a fresh clone, nothing before them:
#   make run    set up .venv, then the main job: train from scratch vs fine-tune a pretrained network, compare, report
#   make test   set up .venv, then what CI runs (.ci/run: ruff, the default test suite, the slow tests)
# Both set up through .ci/run; a second call reuses .venv. Overrides: make run DATA=PATH OUT=DIR ARGS="--budget 60"
# (DATA defaults to CIFAR-10-JPEG in ../shared/datasets when it is there, else the bundled digits).
CIFAR ?= ../shared/datasets/cifar10-jpeg.tar.xz
ifneq ($(wildcard $(CIFAR)),)
DATA ?= $(CIFAR)
else
DATA ?= digits
endif
ifndef OUT
OUT := runs/compare-$(shell date +%Y%m%d-%H%M%S)
endif
# the bundled 8x8 digits are a quick offline check: 60 s a run (compare would derive 240 s for Lite2 at 260 px)
ifeq ($(DATA),digits)
ARGS ?= --budget 60
endif
ARGS ?=

ifneq ($(filter command line environment,$(origin DATA)),)
SOURCE := $(DATA) (given)
else ifeq ($(DATA),digits)
SOURCE := scikit-learn's bundled 8x8 digits ($(CIFAR) is not there)
else
SOURCE := CIFAR-10-JPEG from $(CIFAR)
endif

.PHONY: run test setup

setup:
	@bash .ci/run setup

run: setup
	@echo "make run: from scratch vs fine-tuning on $(SOURCE), report in $(OUT)"
	.venv/bin/imgclf compare --data $(DATA) --out $(OUT) $(ARGS)
	@echo "open this report: $(OUT)/report.html"

test:
	@bash .ci/run
