# moe.cu: one kernel source, two targets.
#   make test          GoogleTest suite on the CPU (SIMT layer), the nvcc compile of every CUDA source
#                      with its resource gate, the ASan+UBSan build of the suite (ucontext fibers) and
#                      the ThreadSanitizer build of the kernel tests (racecheck)
#   make train         data, then the binary that fits this machine, then a default run
#   make train_moe     GPU binary (nvcc, cuBLAS, cuRAND)
#   make train_moe_cpu CPU binary (g++ through the SIMT layer)
#   make bench         speed tables
#   make gpu-profile   the GPU cost report: training steps at the GPU defaults, every kernel and cuBLAS call
#                      costed for an H100 and an A100 (simt/profile.h)
# Options: FIBERS=ucontext (POSIX ucontext fibers instead of Boost.Context), CUDA_HOME=/usr/local/cuda

SHELL := /bin/bash
CXX ?= g++
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
FIBERS ?= boost
BUILD := build

# libcurand: the real host generator from the CUDA toolkit (no GPU needed)
CURAND_DIR := $(firstword $(wildcard $(CUDA_HOME)/lib64/libcurand.so) $(wildcard /usr/lib/x86_64-linux-gnu/libcurand.so))
comma := ,
CURAND_LIB := $(if $(CURAND_DIR),-L$(dir $(CURAND_DIR)) -Wl$(comma)-rpath$(comma)$(dir $(CURAND_DIR)) -lcurand,)
CURAND_FLAG := $(if $(CURAND_DIR),,-DSIMT_NO_CURAND)

# The sources are plain CUDA (kernel<<<grid, block, shared_bytes, stream>>>(...), extern __shared__).
# Every g++ build (CPU, ASan, benches, ablate) compiles copies of all project sources under $(SRC), in
# which simt/cuda_to_cpp has rewritten those two spellings into calls of the SIMT layer (see
# simt/cuda_to_cpp.h). Each copy starts with #line 1 "<original path>", so compiler errors, __FILE__
# and __LINE__ name the original file and line. -I$(SRC) (and no -I.) resolves every quoted include to
# a copy; an include of a file in the same directory finds the copy beside it. g++ runs inside $(SRC)
# ($(IN_SRC) ... $(REL)) so that the main file's name is its original path too (otherwise g++ takes
# the #line name for a header's and warns about anonymous namespaces). nvcc compiles the originals.
SRC := $(BUILD)/src
CUDA_TO_CPP := $(BUILD)/tools/cuda_to_cpp
PROJECT_SOURCES := $(patsubst ./%,%,$(shell find . \( -name .git -o -name build -o -name runs -o -path './$(BUILD)' \) -prune \
                     -o -type f \( -name '*.h' -o -name '*.cuh' -o -name '*.cu' -o -name '*.cpp' \) -print))
REWRITTEN := $(addprefix $(SRC)/,$(PROJECT_SOURCES))
REWRITTEN_HEADERS := $(filter %.h %.cuh,$(REWRITTEN))
# copies whose original was deleted or renamed go too, so an include can never find a stale copy
STALE := $(filter-out $(REWRITTEN),$(shell find $(SRC) -type f ! -name '*.tmp' 2>/dev/null))
$(if $(STALE),$(shell rm -f $(STALE)))
IN_SRC = cd $(SRC) &&
REL = $(patsubst $(abspath $(SRC))/%,%,$(abspath $<))

WARN := -Wall -Wextra
CPU_FLAGS := -std=c++20 -O2 -g -march=native $(WARN) -I$(abspath $(SRC)) -I/usr/include/x86_64-linux-gnu $(CURAND_FLAG)
ifeq ($(FIBERS),ucontext)
  CPU_FLAGS += -DSIMT_FIBERS_UCONTEXT
  FIBER_LIB :=
else
  FIBER_LIB := -lboost_context
endif
CPU_LIBS := $(FIBER_LIB) -lopenblas $(CURAND_LIB) -lstb -lpthread

ASAN_FLAGS := -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              $(WARN) -I$(abspath $(SRC)) -I/usr/include/x86_64-linux-gnu -DSIMT_FIBERS_UCONTEXT $(CURAND_FLAG)
ASAN_LIBS := -lopenblas $(CURAND_LIB) -lstb -lpthread

# Racecheck: the kernel and layer tests under ThreadSanitizer, every CUDA thread a TSan fiber
# (ucontext). simt.cpp itself is not instrumented (SIMT_TSAN makes it annotate what CUDA orders).
TSAN_FLAGS := -std=c++20 -O1 -g -fno-omit-frame-pointer $(WARN) -I$(abspath $(SRC)) -I/usr/include/x86_64-linux-gnu \
              -DSIMT_FIBERS_UCONTEXT -DSIMT_TSAN=1 $(CURAND_FLAG)
TSAN_LIBS := -lopenblas $(CURAND_LIB) -lstb -lpthread

NVCC_FLAGS := -std=c++20 -O3 -I. --expt-relaxed-constexpr \
              -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-Wextra

HEADERS := $(filter %.h %.cuh,$(PROJECT_SOURCES))

# The suite is compiled as a few "unity" translation units per build, each a generated file that
# #includes a group of tests/test_*.cpp: the test files share most of their code (the kernels, the
# run machinery), which g++ would otherwise compile again for every file (two thirds of the
# suite's compile time on the 2-core CI machine). Two groups per build keep make -j2's two cores busy.
#   kernel_tests: the kernels, the layers and the model against their references
#   other_tests:  everything else (run machinery, CLI, plots, the SIMT layer, the tools)
#   tsan_*:       the racecheck build: the tests that run kernels (a third full compile would not pay)
# tests/test_racecheck.cpp belongs to the TSan build only.
TEST_SRCS := $(filter-out tests/test_racecheck.cpp,$(wildcard tests/test_*.cpp))
KERNEL_TEST_SRCS := $(filter-out tests/test_routing_dump.cpp,$(wildcard tests/test_moe*.cpp tests/test_routing_*.cpp)) \
                    tests/test_diagnostics.cpp tests/test_model.cpp tests/test_gpt_kernels.cpp tests/test_reference_grads.cpp
OTHER_TEST_SRCS := $(filter-out $(KERNEL_TEST_SRCS),$(TEST_SRCS))
TSAN_LAYER_TEST_SRCS := tests/test_racecheck.cpp tests/test_sanitizers.cpp tests/test_simt.cpp tests/test_gpt_kernels.cpp
TSAN_MOE_TEST_SRCS := $(filter-out tests/test_routing_dump.cpp,$(wildcard tests/test_moe*.cpp tests/test_routing_*.cpp)) \
                      tests/test_diagnostics.cpp tests/test_model.cpp
UNITY := $(BUILD)/unity
# (re)written at parse time, and only when the list changed, so that make sees an up-to-date file
hash := \#
unity_source = $(shell mkdir -p $(UNITY) && printf '$(hash)include "%s"\n' $(2) > $(UNITY)/$(1).tmp && \
                 { cmp -s $(UNITY)/$(1).tmp $(UNITY)/$(1) || mv $(UNITY)/$(1).tmp $(UNITY)/$(1); }; rm -f $(UNITY)/$(1).tmp)
$(call unity_source,kernel_tests.cpp,$(KERNEL_TEST_SRCS))
$(call unity_source,other_tests.cpp,$(OTHER_TEST_SRCS))
$(call unity_source,tsan_layer_tests.cpp,$(TSAN_LAYER_TEST_SRCS))
$(call unity_source,tsan_moe_tests.cpp,$(TSAN_MOE_TEST_SRCS))
CPU_TEST_OBJS := $(BUILD)/cpu/kernel_tests.o $(BUILD)/cpu/other_tests.o
ASAN_TEST_OBJS := $(BUILD)/asan/kernel_tests.o $(BUILD)/asan/other_tests.o
TSAN_TEST_OBJS := $(BUILD)/tsan/tsan_layer_tests.o $(BUILD)/tsan/tsan_moe_tests.o
# A group's object depends on the rewritten copies of its test files.
$(BUILD)/cpu/kernel_tests.o $(BUILD)/asan/kernel_tests.o: $(addprefix $(SRC)/,$(KERNEL_TEST_SRCS))
$(BUILD)/cpu/other_tests.o $(BUILD)/asan/other_tests.o: $(addprefix $(SRC)/,$(OTHER_TEST_SRCS))
$(BUILD)/tsan/tsan_layer_tests.o: $(addprefix $(SRC)/,$(TSAN_LAYER_TEST_SRCS))
$(BUILD)/tsan/tsan_moe_tests.o: $(addprefix $(SRC)/,$(TSAN_MOE_TEST_SRCS))
# The test files are #included, so g++ takes them for headers and warns that their fixtures (in
# anonymous namespaces) give the generated test classes internal linkage; in one translation unit
# that is harmless. Line tables (-g1) are enough for the sanitizers' stack traces and cost less.
UNITY_FLAGS := -g1 -Wno-subobject-linkage
# Written by the CPU suite (every distinct launch) and by the nvcc check (ptxas's numbers per
# kernel); the later stages check every launch against the table (SIMT_RESOURCES).
LAUNCH_LOG := $(BUILD)/cpu/launches.tsv
RESOURCE_TABLE := $(BUILD)/nvcc/resources.tsv
PTXAS_GATE := $(BUILD)/tools/ptxas_gate
RESOURCES_ENV = $(if $(wildcard $(RESOURCE_TABLE)),SIMT_RESOURCES=$(abspath $(RESOURCE_TABLE)),)

.PHONY: all deps test test-cpu test-asan test-tsan nvcc-check train data bench bench-simt bench-kernels bench-moe clean help
all: train_moe_cpu

help:
	@sed -n '2,11p' Makefile

# installs missing Debian packages (or prints the exact apt-get line to run)
deps:
	@./deps.sh

# ---------------------------------------------------------------- the rewritten copies (g++ builds)
$(CUDA_TO_CPP): simt/cuda_to_cpp.cpp simt/cuda_to_cpp.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O2 $(WARN) $< -o $@

# a construct the rewrite does not understand stops the build here, with file:line
$(SRC)/%: % $(CUDA_TO_CPP)
	@mkdir -p $(dir $@)
	@$(CUDA_TO_CPP) $< $@

.PHONY: rewrite
rewrite: $(REWRITTEN)

# ---------------------------------------------------------------- CPU build (g++ + SIMT layer)
$(BUILD)/cpu/simt.o: $(SRC)/simt/simt.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(CPU_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/cpu/%_tests.o: $(UNITY)/%_tests.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(CPU_FLAGS) $(UNITY_FLAGS) -c $(abspath $<) -o $(abspath $@)

# the cost report's counting and model (tests/test_profile.cpp; no instrumentation in this build)
$(BUILD)/cpu/profile.o: $(SRC)/simt/profile.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(CPU_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/cpu/run_tests: $(CPU_TEST_OBJS) $(BUILD)/cpu/simt.o $(BUILD)/cpu/profile.o
	$(CXX) $(CPU_FLAGS) $^ -o $@ -lgtest -lgtest_main $(CPU_LIBS)

train_moe_cpu: $(SRC)/train_moe.cu $(REWRITTEN_HEADERS) $(BUILD)/cpu/simt.o
	$(IN_SRC) $(CXX) $(CPU_FLAGS) -x c++ $(REL) -x none $(abspath $(BUILD)/cpu/simt.o) -o $(abspath $@) $(CPU_LIBS)

test-cpu: $(BUILD)/cpu/run_tests train_moe_cpu
	@rm -f $(LAUNCH_LOG)
	SIMT_LAUNCH_LOG=$(abspath $(LAUNCH_LOG)) $(BUILD)/cpu/run_tests --gtest_output=json:$(BUILD)/cpu/results.json

# ---------------------------------------------------------------- sanitizer build (ucontext fibers)
$(BUILD)/asan/simt.o: $(SRC)/simt/simt.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(ASAN_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/asan/%_tests.o: $(UNITY)/%_tests.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(ASAN_FLAGS) $(UNITY_FLAGS) -c $(abspath $<) -o $(abspath $@)

$(BUILD)/asan/profile.o: $(SRC)/simt/profile.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(ASAN_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/asan/run_tests: $(ASAN_TEST_OBJS) $(BUILD)/asan/simt.o $(BUILD)/asan/profile.o
	$(CXX) $(ASAN_FLAGS) $^ -o $@ -lgtest -lgtest_main $(ASAN_LIBS)

# The sanitizer run skips the slow whole-model tests (names containing "Slow").
test-asan: $(BUILD)/asan/run_tests
	ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=0 UBSAN_OPTIONS=print_stacktrace=1 $(RESOURCES_ENV) \
	  tests/run_sharded.sh $(BUILD)/asan $(BUILD)/asan/run_tests --gtest_filter='-*Slow*:*Death*'

# ---------------------------------------------------------------- racecheck build (ThreadSanitizer)
$(BUILD)/tsan/simt.o: $(SRC)/simt/simt.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(TSAN_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/tsan/%_tests.o: $(UNITY)/%_tests.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(TSAN_FLAGS) -fsanitize=thread $(UNITY_FLAGS) -c $(abspath $<) -o $(abspath $@)

$(BUILD)/tsan/run_tests: $(TSAN_TEST_OBJS) $(BUILD)/tsan/simt.o
	$(CXX) $(TSAN_FLAGS) -fsanitize=thread $^ -o $@ -lgtest -lgtest_main $(TSAN_LIBS)

# A TSan report fails the test that was running (tests/test_racecheck.cpp) and the run (exit 66).
# Every CUDA thread costs a new TSan fiber (a fresh thread state and stack, so that no history
# carries over), so this stage runs each kernel at the shapes of its cheapest test. Left out:
# the slow whole-model tests and the death tests, as under ASan; the end-to-end runs of the CPU
# trainer (*Cli*, the report plots); the tests that repeat kernels other tests run, over grids of
# configurations, worker counts or thread orders (a race does not depend on the thread order
# here); the no-host-round-trip checks; the SIMT test that runs a racy kernel on purpose
# (test_racecheck's child processes do that); and these, whose kernels a cheaper test runs:
# the expert-choice layer (the selection: ...SelectionMatchesReferenceWithTies and ...Coverage;
# dispatch and combine: the token-choice tests), training steps with a bias (the update kernel:
# TheBiasFalls...), the reroute capacity sweep (RerouteHandExample...), the diagnostics on random
# routings (AgreeWithTheLayersOwnCounts), uniform routing, the smaller-batch forward, the batched
# bias backward (GptKernels.BiasBackward).
TSAN_SKIP := *Slow*:*Death*:*Cli.*:RoutingBiasReport.*:*OverGrid:*OverConfigGrid:*BitIdentical*:*Determinis*:$\
             *Shuffled*:*Repeatable:*NeverCopy*:*NoHostRoundTrip:MoeTest.ExpertChoiceLayerMatchesReference:$\
             RoutingBiasModel.TrainingStepsMoveTheBiasByTheRuleEvaluationDoesNot:MoeTest.ReroutePlacesMoreAndRespectsGroupCapacity:$\
             Diagnostics.DeviceStatsMatchReferenceOnRandomRoutings:MoeTest.UniformRoutingGivesAuxOne:$\
             ProtectDeviceMemory.SmallerBatchForwardMatchesExactModel:GptKernels.BiasBackwardBatchedAndSharedMatrix
test-tsan: $(BUILD)/tsan/run_tests
	TSAN_OPTIONS=history_size=4 $(RESOURCES_ENV) tests/run_sharded.sh $(BUILD)/tsan $(BUILD)/tsan/run_tests \
	  --gtest_filter='-$(TSAN_SKIP)'

# ---------------------------------------------------------------- GPU build (nvcc)
train_moe: train_moe.cu $(HEADERS)
	@if [ -z "$(NVCC)" ]; then echo "nvcc not found: install the CUDA toolkit to build the GPU binary"; exit 2; fi
	$(NVCC) $(NVCC_FLAGS) -x cu $< -o $@ -lcublas -lcurand -lstb

# every CUDA source through nvcc, so a kernel that only g++ accepts fails the suite; ptxas -v's
# report of each goes to <object>.ptxas for the resource gate (the compiler's other output is shown)
NVCC_OBJS := $(BUILD)/nvcc/train_moe.o $(patsubst tests/%.cu,$(BUILD)/nvcc/tests/%.o,$(wildcard tests/*.cu))
NVCC_COMPILE = @mkdir -p $(dir $@); echo "$(NVCC) $(NVCC_FLAGS) -Xptxas -v -x cu -c $< -o $@"; \
	$(NVCC) $(NVCC_FLAGS) -Xptxas -v -x cu -c $< -o $@ 2> $@.log; status=$$?; \
	grep '^ptxas info\|^    [0-9]* bytes stack frame' $@.log > $@.ptxas; \
	grep -v '^ptxas info\|^    [0-9]* bytes stack frame' $@.log >&2; exit $$status
$(BUILD)/nvcc/train_moe.o: train_moe.cu $(HEADERS)
	$(NVCC_COMPILE)
$(BUILD)/nvcc/tests/%.o: tests/%.cu $(HEADERS)
	$(NVCC_COMPILE)
$(BUILD)/nvcc/bad_resources.o: tests/bad_resources.cuh
	$(NVCC_COMPILE)

$(PTXAS_GATE): simt/ptxas_gate.cpp simt/ptxas_gate.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O2 $(WARN) -I. $< -o $@

# The resource gate: the project's kernels against ptxas's numbers and the CPU suite's launches
# (writes $(RESOURCE_TABLE)); then the deliberately bad kernels must be rejected, each for its reason.
nvcc-check:
	@if [ -z "$(NVCC)" ]; then echo "nvcc not found: skipping the nvcc compile of the CUDA sources and the resource gate"; \
	 else $(MAKE) --no-print-directory $(NVCC_OBJS) $(BUILD)/nvcc/bad_resources.o $(PTXAS_GATE) && \
	 $(PTXAS_GATE) --launches $(LAUNCH_LOG) --table $(RESOURCE_TABLE) $(addsuffix .ptxas,$(NVCC_OBJS)) && \
	 { $(PTXAS_GATE) --launches tests/bad_resources.launches $(BUILD)/nvcc/bad_resources.o.ptxas > $(BUILD)/nvcc/bad_resources.gate; \
	   status=$$?; ok=1; [ $$status -eq 1 ] || ok=0; \
	   for why in 'FAIL gate_bad_spill_kernel: .* bytes of spill stores' \
	              'FAIL gate_bad_register_hungry_kernel: .* registers per thread on sm_80 times its largest launch of 1024 threads' \
	              'FAIL gate_bad_static_shared_kernel: a launch asks for 16384 bytes of dynamic shared memory; with 40000 bytes'; do \
	     grep -q "$$why" $(BUILD)/nvcc/bad_resources.gate || ok=0; done; \
	   if [ $$ok -eq 1 ]; then echo "resource gate: the deliberately bad kernels of tests/bad_resources.cuh are rejected"; \
	   else cat $(BUILD)/nvcc/bad_resources.gate; echo "resource gate: tests/bad_resources.cuh was not rejected as expected"; exit 1; fi; }; fi

# ---------------------------------------------------------------- MoE layer bench (stage table)
.PHONY: bench-moe
$(BUILD)/cpu/bench_moe: $(SRC)/bench/bench_moe.cpp $(REWRITTEN_HEADERS) $(BUILD)/cpu/simt.o
	$(IN_SRC) $(CXX) $(CPU_FLAGS) $(REL) $(abspath $(BUILD)/cpu/simt.o) -o $(abspath $@) $(CPU_LIBS)

bench-moe: $(BUILD)/cpu/bench_moe
	$(BUILD)/cpu/bench_moe

# ---------------------------------------------------------------- GPT kernel bench (per-launcher table)
.PHONY: bench-kernels
$(BUILD)/cpu/bench_kernels: $(SRC)/bench/bench_kernels.cpp $(REWRITTEN_HEADERS) $(BUILD)/cpu/simt.o
	$(IN_SRC) $(CXX) $(CPU_FLAGS) $(REL) $(abspath $(BUILD)/cpu/simt.o) -o $(abspath $@) $(CPU_LIBS)

bench-kernels: $(BUILD)/cpu/bench_kernels
	$(BUILD)/cpu/bench_kernels

# ---------------------------------------------------------------- SIMT layer bench (cost per CUDA thread)
.PHONY: bench-simt
$(BUILD)/cpu/bench_simt: $(SRC)/bench/bench_simt.cpp $(REWRITTEN_HEADERS) $(BUILD)/cpu/simt.o
	$(IN_SRC) $(CXX) $(CPU_FLAGS) $(REL) $(abspath $(BUILD)/cpu/simt.o) -o $(abspath $@) $(CPU_LIBS)

bench-simt: $(BUILD)/cpu/bench_simt
	$(BUILD)/cpu/bench_simt

# ---------------------------------------------------------------- GPU cost report (simt/profile.h)
# bench/gpu_profile.cpp (the trainer's step at the GPU defaults) is compiled with g++'s ThreadSanitizer
# instrumentation, which calls __tsan_read4(addr) and friends before every load and store, but linked
# without its runtime: simt/profile_hooks.cpp (built without the flag) receives the calls and counts
# the kernels' global memory accesses. Vectorisation is off so that each CUDA thread's access stays
# the 4-byte access a GPU thread makes. Nothing of this is in any other build.
# One step by default (about 4 minutes of the 2-core machine); PROFILE_ARGS passes options:
# "--profile-steps 3", or any trainer flag ("--experts 0").
.PHONY: gpu-profile
PROFILE_FLAGS := $(CPU_FLAGS) -fno-tree-vectorize -fno-tree-slp-vectorize -fsanitize=thread \
                 --param tsan-instrument-func-entry-exit=0
$(BUILD)/prof/profile_hooks.o: $(SRC)/simt/profile_hooks.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(CPU_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/prof/gpu_profile.o: $(SRC)/bench/gpu_profile.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(PROFILE_FLAGS) -c $(REL) -o $(abspath $@)

$(BUILD)/prof/gpu_profile: $(BUILD)/prof/gpu_profile.o $(BUILD)/prof/profile_hooks.o $(BUILD)/cpu/profile.o $(BUILD)/cpu/simt.o
	$(CXX) $(CPU_FLAGS) $^ -o $@ $(CPU_LIBS)

# the report goes to the console and to $(BUILD)/prof/gpu_profile.md
gpu-profile: deps data
	@$(MAKE) --no-print-directory -j2 $(BUILD)/prof/gpu_profile
	$(BUILD)/prof/gpu_profile $(PROFILE_ARGS) | tee $(BUILD)/prof/gpu_profile.md; exit $${PIPESTATUS[0]}

# ---------------------------------------------------------------- ablation study (ablations/README.md)
# Trains the runs that are missing (resumable), then writes ablations/README.md and its plots.
# ABLATE_ARGS passes options, e.g. ABLATE_ARGS="--report-only" or "--jobs 1".
.PHONY: ablate
$(BUILD)/cpu/ablate: $(SRC)/ablations/ablate.cpp $(REWRITTEN_HEADERS)
	@mkdir -p $(dir $@)
	$(IN_SRC) $(CXX) $(CPU_FLAGS) $(REL) -o $(abspath $@) -lstb

ablate: data train_moe_cpu $(BUILD)/cpu/ablate
	$(BUILD)/cpu/ablate $(ABLATE_ARGS)

# ---------------------------------------------------------------- top-level targets
# tiny Shakespeare: copied from ../shared/data/ when present, else downloaded; sha256-checked
data:
	@bash data/get_data.sh

# data, then the binary that fits this machine (GPU if nvidia-smi sees one and nvcc is here), then a
# default run; extra trainer flags go in ARGS, e.g.  make train ARGS="--experts 0"
train: deps data
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && [ -n "$(NVCC)" ]; then \
	  $(MAKE) --no-print-directory train_moe && ./train_moe $(ARGS); \
	else \
	  echo "no GPU found: training on the CPU through the SIMT layer"; \
	  $(MAKE) --no-print-directory -j2 train_moe_cpu && ./train_moe_cpu $(ARGS); fi

# speed tables: the SIMT layer, every kernel, the MoE stages, and whole training steps
bench: deps data
	@$(MAKE) --no-print-directory -j2 $(BUILD)/cpu/bench_simt $(BUILD)/cpu/bench_kernels $(BUILD)/cpu/bench_moe train_moe_cpu
	@$(MAKE) --no-print-directory bench-simt bench-kernels bench-moe
	@bash bench/bench_train.sh

# The stages run one after another (each builds with -j2) so the output reads in order.
test: deps
	@$(MAKE) --no-print-directory -j2 test-cpu
	@$(MAKE) --no-print-directory -j2 nvcc-check
	@$(MAKE) --no-print-directory -j2 test-asan
	@$(MAKE) --no-print-directory -j2 test-tsan
	@passed=0; failed=0; for r in $(BUILD)/cpu/results.json $(BUILD)/asan/results.[01].json $(BUILD)/tsan/results.[01].json; do \
	  n=$$(grep -m1 -o '"tests": [0-9]*' $$r | grep -o '[0-9]*'); f=$$(grep -m1 -o '"failures": [0-9]*' $$r | grep -o '[0-9]*'); \
	  passed=$$((passed + n - f)); failed=$$((failed + f)); done; echo "$$passed passed, $$failed failed"

clean:
	rm -rf $(BUILD) train_moe train_moe_cpu
