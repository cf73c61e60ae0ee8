# anomalyforge — every target prints where its output went.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
MODELS  ?= .cache/models
RUN_DIR ?= runs/demo
EVAL_CONFIG ?= configs/eval.yaml
EVAL_DIR ?= runs/eval
# Prefect keeps its local database and settings inside the project, never in ~/.prefect
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export U2NET_HOME := $(CURDIR)/$(MODELS)

.PHONY: install lint test test-fast demo demo-eval demo-weather frames synth serve eval compare compare-weather weather-benchmark real-data ablation bench bench-synth bench-metrics bench-diffusion bench-train bench-weather bench-mask2former bench-eval clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the local CPU wheel: nothing later may pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# the ImageNet-C corruptions (tasks/corruptions.py): without its declared opencv-python (GUI build), which would
	# shadow opencv-python-headless; what it imports is in our dependencies
	$(BIN)/pip install --quiet --no-deps imagecorruptions-imaug==1.1.5
	$(BIN)/anomalyforge fetch-weights --model-home $(MODELS)
	@echo "installed into $(VENV); rembg weights in $(MODELS)"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -n 2 -q

test-fast:
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

demo:
	$(BIN)/anomalyforge synth --config configs/demo.yaml --run-dir $(RUN_DIR)
	$(BIN)/anomalyforge validate $(RUN_DIR)/shards
	@echo "demo outputs: $(RUN_DIR)/shards -> the latest version (WebDataset + parquet manifest, report.md, composites.png)"

# the per-condition evaluation split: held-out demo scenes, unseen anomaly class, every composite in every condition
# (configs/compare.yaml evaluates this path, so it is fixed)
EVAL_SPLIT_DIR := runs/demo-eval
demo-eval:
	$(BIN)/anomalyforge synth --config configs/demo_eval.yaml --run-dir $(EVAL_SPLIT_DIR)
	@echo "evaluation split: $(EVAL_SPLIT_DIR)/shards (weather.png: one scene in every condition)"

# training shards with adverse weather (the demo profile + a random condition per sample)
WEATHER_DIR ?= runs/demo-weather
demo-weather:
	$(BIN)/anomalyforge synth --config configs/demo_weather.yaml --run-dir $(WEATHER_DIR)

# unlabeled driving footage (a folder of frames or a video) pseudo-labelled by a frozen ESPNetv2:
#   make frames FRAMES=/data/dashcam CHECKPOINT=weights/espnetv2_s_2.0_city_1024x512.pth
FRAMES ?= footage
CHECKPOINT ?= weights/espnetv2_s_2.0_city_1024x512.pth
FRAMES_DIR ?= runs/frames
frames:
	$(BIN)/anomalyforge synth --config configs/frames.yaml --run-dir $(FRAMES_DIR) \
		--set scenes.root=$(FRAMES) --set scenes.segmenter.checkpoint=$(CHECKPOINT)
	@echo "frames: $(FRAMES_DIR)/shards (scenes.png: the pseudo labels and horizons; rejects.parquet: frames not used)"

# one-off local run without a server (Prefect's temporary one), e.g. make synth SYNTH_CONFIG=configs/diffusion.yaml
SYNTH_CONFIG ?= configs/demo.yaml
SYNTH_DIR ?= runs/$(basename $(notdir $(SYNTH_CONFIG)))
synth:
	$(BIN)/anomalyforge synth --config $(SYNTH_CONFIG) --run-dir $(SYNTH_DIR)

# local server (SQLite) + cpu/gpu pools + deployments + workers; then `prefect deployment run synth/diffusion`
PORT ?= 4200
serve:
	$(BIN)/anomalyforge serve --port $(PORT)

eval:
	$(BIN)/anomalyforge eval --config $(EVAL_CONFIG) --out-dir $(EVAL_DIR)

# Train any registered method (make train-eel, train-rpl, train-rpl_corocl, ...) on the latest shard version of
# RUN_DIR (the demo shards are made first when there are none). Demo profile by default;
# TRAIN_SET="segmenter.name=espnetv2 segmenter.checkpoint=path.pth" for a real one.
TRAIN_CONFIG ?= configs/train.yaml
TRAIN_SET ?=
train-%:
	@test -e $(RUN_DIR)/LATEST || $(MAKE) demo RUN_DIR=$(RUN_DIR)
	$(BIN)/anomalyforge train --method $* --config $(TRAIN_CONFIG) --shards $(RUN_DIR) $(foreach s,$(TRAIN_SET),--set $(s))

# Every registered method + the post-hoc baselines, one table: $(RUN_DIR)/compare/compare.md|csv|png
COMPARE_CONFIG ?= configs/compare.yaml
COMPARE_SET ?=
# COMPARE_WITH=runs/other: every method is also trained on that version, and the table adds the per-condition
# difference (other − RUN_DIR) of each method: $(RUN_DIR)/compare-vs-other/compare.md, study.csv, study.png
COMPARE_WITH ?=
compare:
	@test -e $(RUN_DIR)/LATEST || $(MAKE) demo RUN_DIR=$(RUN_DIR)
	@test -e $(EVAL_SPLIT_DIR)/LATEST || $(MAKE) demo-eval
	$(BIN)/anomalyforge compare --config $(COMPARE_CONFIG) --shards $(RUN_DIR) $(foreach w,$(COMPARE_WITH),--shards $(w)) $(foreach s,$(COMPARE_SET),--set $(s))

# Real-data profile: your footage (a folder or a video), object photos and real segmenter -> shards -> every method
# compared on real benchmarks, with 95 % intervals. Defaults: the developers' ../shared/data. Your own:
#   make real-data FOOTAGE=/data/dashcam PHOTOS=/data/objects SEGMENTER=weights/espnetv2_s_2.0_city_1024x512.pth \
#       REAL_COMPARE=my_compare.yaml
# (REAL_COMPARE: a copy of configs/real_compare.yaml listing your benchmarks; REAL_SET="max_steps=600 seeds=3")
REAL_DIR ?= runs/real
REAL_SYNTH ?= configs/real_synth.yaml
REAL_COMPARE ?= configs/real_compare.yaml
REAL_SET ?=
FOOTAGE_SET = --set scenes.root=$(FOOTAGE) --set 'scenes.patterns=["**/*.jpg","**/*.jpeg","**/*.png"]'
PHOTOS_SET = --set 'objects.files=[{root: $(PHOTOS)}]'
real-data:
	$(BIN)/anomalyforge synth --config $(REAL_SYNTH) --run-dir $(REAL_DIR) $(if $(FOOTAGE),$(FOOTAGE_SET)) \
		$(if $(PHOTOS),$(PHOTOS_SET)) $(if $(SEGMENTER),--set scenes.segmenter.checkpoint=$(SEGMENTER))
	$(BIN)/anomalyforge compare --config $(REAL_COMPARE) --shards $(REAL_DIR) \
		$(if $(SEGMENTER),--set train.segmenter.checkpoint=$(SEGMENTER)) $(foreach s,$(REAL_SET),--set $(s))
	@echo "real-data: shards $(REAL_DIR)/shards, table $(REAL_DIR)/compare/compare.md"

# One synthesis (or training) choice varied, every method compared on each arm: make ablation STUDY=harmonization
# (studies: configs/ablations.yaml — harmonization, objects_per_scene, size_prior, objects, weather_share, training_crop)
# (ABLATION_SET="methods=[sleeg] lr_sweep=[]": for every arm's comparison)
STUDY ?= harmonization
ABLATION_SET ?=
ablation:
	$(BIN)/anomalyforge ablate --config configs/ablations.yaml --study $(STUDY) $(foreach s,$(ABLATION_SET),--set $(s))

# A real benchmark under every condition (physical weather and ImageNet-C), as a new folder-layout benchmark:
#   make weather-benchmark BENCHMARK=data/road_anomaly KIND=road_anomaly_pre CHECKPOINT=weights/espnetv2_s_2.0_city_1024x512.pth
# (WEATHERED=<out folder>; WEATHER_SET="families=[weather] severities.weather=[0.5,1.0]" for other choices)
BENCHMARK ?= data/road_anomaly
KIND ?= road_anomaly_pre
WEATHERED ?= runs/weathered/$(notdir $(BENCHMARK))
WEATHER_SET ?=
weather-benchmark:
	$(BIN)/anomalyforge weather-benchmark --config configs/weather_benchmark.yaml --kind $(KIND) --root $(BENCHMARK) \
		--out $(WEATHERED) --checkpoint $(CHECKPOINT) $(foreach s,$(WEATHER_SET),--set $(s))

# The weather study: the demo shards without and with weather (same seed, budget and frozen segmenter)
compare-weather:
	@test -e $(WEATHER_DIR)/LATEST || $(MAKE) demo-weather
	$(MAKE) compare COMPARE_WITH=$(WEATHER_DIR)

bench: bench-synth bench-metrics bench-diffusion bench-train bench-weather bench-mask2former bench-eval

# each weather effect on a 2048x1024 frame, against encoding that frame (JPEG, PNG) and the whole shard sample
WEATHER_BENCH ?=
bench-weather:
	$(BIN)/python bench/weather_throughput.py $(WEATHER_BENCH)

bench-synth:
	$(BIN)/python bench/synth_throughput.py

# Mask2Former Swin-T / Swin-L vs ESPNetv2 at 1024×512: s/image and peak memory; on a GPU machine:
# make bench-mask2former MASK2FORMER_BENCH="--device cuda --dtype bfloat16"
MASK2FORMER_BENCH ?=
bench-mask2former:
	$(BIN)/python bench/mask2former_resources.py $(MASK2FORMER_BENCH)

bench-train:
	$(BIN)/python bench/train_throughput.py

# the whole evaluation (5 post-hoc scores, one pass) against the bare ESPNetv2 forward at RoadAnomaly's size;
# e.g. make bench-eval EVAL_BENCH="--old" (also one pass per score) or "--batch-size 4 --device cuda"
EVAL_BENCH ?=
bench-eval:
	$(BIN)/python bench/eval_throughput.py $(EVAL_BENCH)

bench-metrics:
	$(BIN)/python bench/metrics_throughput.py

# tiny UNet on CPU; on a GPU machine: make bench-diffusion DIFFUSION_BENCH="--size sd15"
DIFFUSION_BENCH ?=
bench-diffusion:
	$(BIN)/python bench/diffusion_throughput.py $(DIFFUSION_BENCH)

clean:
	rm -rf runs .pytest_cache
