# Two commands from a fresh clone, nothing before them:
#   make run    set up .venv, then the main job: train from scratch vs fine-tune a pretrained network, compare, report
#   make test   set up .venv, then what CI runs (.ci/run: ruff, the default test suite, the slow tests)
# Both set up through .ci/run; a second call reuses .venv. Overrides: make run DATA=PATH OUT=DIR ARGS="--budget 60"
# DATA defaults to flowers-mini, the 400 real photos that ship inside imgclf (no download, no ../shared);
# CIFAR-10 is one DATA= away: make run DATA=../shared/datasets/cifar10-jpeg.tar.xz
DATA ?= flowers-mini
ifndef OUT
OUT := runs/compare-$(shell date +%Y%m%d-%H%M%S)
endif
ARGS ?=

.PHONY: run test setup

setup:
	@bash .ci/run setup

run: setup
	@echo "make run: from scratch vs fine-tuning on $(DATA), report in $(OUT)"
	.venv/bin/imgclf compare --data $(DATA) --out $(OUT) $(ARGS)
	@echo "open this report: $(OUT)/report.html"

test:
	@bash .ci/run
