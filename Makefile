# Build, test and run train_gpt2_sft.
#   make            build the trainer and the test
#   make check      the C self-check: matmul and gradient checks, needs only a C compiler
#   make test       build, generate missing reference files (PyTorch), run every test suite
#   make run        build, prepare IMDB, fine-tune, evaluate (see README)
#   make NO_OMP=1 …  the same without OpenMP (one thread)
#   make MPI=1      the trainer with MPI (mpicc -DUSE_MPI), for mpirun -np N (README: Several machines)
#   make test-mpi   build/train_gpt2_sft_mpi, then N ranks against one process, faults, SIGKILL of a rank
#   make asan / make ubsan   the C tests under AddressSanitizer / UndefinedBehaviorSanitizer
#   make test-builds         the C test built for each instruction set (AVX-512, AVX2, SSE2, ...)

SHELL := /bin/bash
CC ?= cc
PYTHON ?= python3
# the PyTorch reference needs Debian's python3-torch, which lives in /usr/bin/python3
TORCH_PYTHON ?= /usr/bin/python3
OPT ?= -O3 -march=native
# -ffp-contract=fast: a*b+c as one fused multiply-add (the matmul kernel's
# vectors rely on it); -fno-math-errno: sqrtf need not set errno, so AdamW's
# loop vectorizes (values are the same: sqrt is correctly rounded either way)
CFLAGS ?= $(OPT) -ffp-contract=fast -fno-math-errno
CFLAGS += -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
# MPI (Open MPI from Debian: apt-get install openmpi-bin libopenmpi-dev)
MPICC ?= mpicc
ifeq ($(MPI),1)
  CC = $(MPICC)
  CFLAGS += -DUSE_MPI
endif
LDLIBS = -lm
REF = build/ref
ifeq ($(NO_OMP),1)
  OMP_FLAGS =
else
  OMP_FLAGS = -fopenmp
endif

.PHONY: all check test test-c test-builds test-mpi run asan ubsan fuzz clean reference FORCE

all: train_gpt2_sft test_sft

# Rebuild whenever the compiler or flags change (e.g. NO_OMP=1 after a default build).
build/flags: FORCE
	@mkdir -p build
	@echo '$(CC) $(CFLAGS) $(OMP_FLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(OMP_FLAGS)' > $@

train_gpt2_sft: train_gpt2_sft.c build/flags
	$(CC) $(CFLAGS) $(OMP_FLAGS) -o $@ $< $(LDLIBS)

test_sft: test_sft.c train_gpt2_sft.c build/flags
	$(CC) $(CFLAGS) $(OMP_FLAGS) -o $@ $< $(LDLIBS)

build/bench_sft: dev/bench_sft.c train_gpt2_sft.c build/flags
	$(CC) $(CFLAGS) $(OMP_FLAGS) -o $@ $< $(LDLIBS)

# the MPI trainer under its own name, beside the default build (tests, benchmark)
build/train_gpt2_sft_mpi: train_gpt2_sft.c build/flags
	$(MPICC) $(CFLAGS) -DUSE_MPI $(OMP_FLAGS) -o $@ $< $(LDLIBS)

# Reference files: random GPT-2 checkpoints (tiny and 124M shapes) and the
# PyTorch debug states the C test compares against (real IMDB tokens when
# data/imdb exists, random ones otherwise).
REF_DATA = $(if $(wildcard data/imdb/imdb_train.bin),--data data/imdb/imdb_train.bin,)
REF_TINY = $(REF)/gpt2_tiny.bin $(REF)/gpt2_tiny_debug_state.bin $(REF)/gpt2_tiny_reg_debug_state.bin \
           $(REF)/gpt2_tiny_dropout_debug_state.bin $(REF)/gpt2_tiny_lm_debug_state.bin \
           $(REF)/gpt2_tiny_lm_dropout_debug_state.bin
REF_124M = $(REF)/gpt2_124M.bin $(REF)/gpt2_124M_debug_state.bin $(REF)/gpt2_124M_dropout_debug_state.bin \
           $(REF)/gpt2_124M_lm_debug_state.bin
reference: $(REF_TINY) $(REF_124M)
$(REF_TINY) $(REF_124M):
	$(TORCH_PYTHON) dev/train_gpt2_sft.py test-inputs --out-dir $(REF) $(REF_DATA)

# js-tiktoken, the independent tokenizer prepro_imdb.py is checked against
build/npm/node_modules/js-tiktoken:
	npm install --prefix build/npm --no-audit --no-fund js-tiktoken@1.0.21

C_SUITES = \
  "C self-check: matmul, gradients by central differences::./test_sft" \
  "C, tiny model::./test_sft $(REF_TINY)" \
  "C, GPT-2 124M shapes::./test_sft $(REF_124M)" \
  "training program: resume, threads, predict::$(PYTHON) dev/test/test_train_cli.py" \
  "bad inputs::$(PYTHON) dev/test/test_bad_inputs.py --binary ./train_gpt2_sft" \
  "SIGKILL during checkpoint saves::$(PYTHON) dev/test/test_kill_save.py --binary ./train_gpt2_sft"
PYTHON_SUITES = \
  "PyTorch reference selftest::$(TORCH_PYTHON) dev/train_gpt2_sft.py selftest" \
  "tokenizer vs js-tiktoken::$(PYTHON) dev/test/test_tokenizer.py" \
  "prepro_imdb.py::$(PYTHON) dev/test/test_prepro.py" \
  "export to Hugging Face, classify.py::$(TORCH_PYTHON) dev/test/test_export_hf.py" \
  "import from Hugging Face, standard library only::$(PYTHON) dev/test/test_import_hf.py" \
  "plot_log.py::$(TORCH_PYTHON) dev/test/test_plot_log.py"

# ./test_sft without arguments: no PyTorch, no reference files
check: test_sft
	./test_sft

test: all reference build/npm/node_modules/js-tiktoken
	bash dev/run_tests.sh $(C_SUITES) $(PYTHON_SUITES)

# the C tests alone (CI also runs them as `make NO_OMP=1 test-c`)
test-c: all reference
	bash dev/run_tests.sh $(C_SUITES)

# MPI: N ranks give one process's results (dev/test/test_mpi.py, which also
# checks failing ranks), and a rank killed mid-run leaves the checkpoint intact.
# mpirun runs 2 ranks, --oversubscribe (more ranks than cores is fine here).
# Kills come 0.5 s or more after the launch: a rank killed before MPI_Init has
# finished (0.06 s, twice in CI) left OpenMPI's mpirun waiting forever, which
# is mpirun's startup, not the trainer's checkpointing under test.
test-mpi: build/train_gpt2_sft_mpi train_gpt2_sft
	bash dev/run_tests.sh "MPI: 2 ranks against one process, failing ranks::$(PYTHON) dev/test/test_mpi.py" \
	  "MPI: SIGKILL of a rank::$(PYTHON) dev/test/test_kill_save.py --binary build/train_gpt2_sft_mpi --ranks 2 --kills 12 --min-delay 0.5 --out-dir build/kill_save_mpi"

# test_sft built for every instruction set this CPU runs (AVX-512, AVX2, SSE2,
# the portable and reference kernels), with gcc and clang: the tiny test and
# the self-check each
test-builds: reference
	bash dev/test_builds.sh

# The C tests (self-check and tiny model) and the bad-input corpus under
# AddressSanitizer (with LeakSanitizer) or UndefinedBehaviorSanitizer; any
# report fails. One rule for both: SAN is the -fsanitize= value.
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -fno-sanitize-recover=all
asan: SAN = address
ubsan: SAN = undefined
asan ubsan: reference
	$(CC) $(SAN_FLAGS) -fsanitize=$(SAN) -o build/test_sft_$@ test_sft.c $(LDLIBS)
	$(CC) $(SAN_FLAGS) -fsanitize=$(SAN) -o build/train_gpt2_sft_$@ train_gpt2_sft.c $(LDLIBS)
	bash dev/run_tests.sh "C self-check, $@::./build/test_sft_$@" "C test, $@::./build/test_sft_$@ $(REF_TINY)" \
	  "bad inputs, $@::$(PYTHON) dev/test/test_bad_inputs.py --binary build/train_gpt2_sft_$@ --out-dir build/bad_inputs_$@"

# libFuzzer on the checkpoint and dataset readers (clang), SECONDS each
fuzz:
	bash dev/fuzz/run_fuzz.sh $(or $(SECONDS),60)

# The main job. Data: $IMDB_ARCHIVE, else ../shared/data/aclImdb_v1.tar.gz, else
# a download (prepro_imdb.py decides). Model: gpt2_124M.bin if present (llm.c's
# checkpoint, see README) is fine-tuned. Without it, both stages run here:
# stage 1 pretrains a small GPT-2 on the texts of IMDB's train and unlabelled
# reviews (next-token loss) for 8 minutes of updates (at most 6000: the time
# budget keeps `make run` within 20 minutes on a slow 2-core machine too)
# and keeps it in build/imdb_lm_d2.bin, so a second `make run` only
# fine-tunes; stage 2 fine-tunes it on the labelled reviews.
# Output: the fine-tuned model, the training logs, and the final evaluation
# on the 25,000 test reviews.
IMDB = data/imdb/imdb_train.bin data/imdb/imdb_test.bin data/imdb/imdb_unsup.bin
RUN_PRETRAINED = -m gpt2_124M.bin --max-len 256 --truncation head+tail --epochs 1 --batch-size 8 --lr 5e-5 \
                 --warmup-ratio 0.06 --weight-decay 0.01 --eval-every 500 --eval-examples 500 --log-every 20
PRETRAIN = --task lm --init d2 --max-len 1024 --batch-size 4 --max-steps 6000 --time-budget 8 --lr 3e-3 \
           --warmup-steps 100 --weight-decay 0.1 --softmax sampled --log-every 100 --eval-every 1000 --eval-examples 100
FINETUNE = -m build/imdb_lm_d2.bin --max-len 1024 --truncation head+tail --epochs 1 --batch-size 32 --lr 1e-3 \
           --warmup-ratio 0.05 --weight-decay 0.01 --eval-every 100 --eval-examples 1000 --log-every 25
$(IMDB):
	$(PYTHON) prepro_imdb.py --out-dir data/imdb

# stage 1, written under a temporary name until it is complete
build/imdb_lm_d2.bin: | train_gpt2_sft $(IMDB)
	@mkdir -p build
	@echo "stage 1: pretraining a small GPT-2 (d2) on the texts of IMDB's train and unlabelled reviews"
	@set -o pipefail; ./train_gpt2_sft $(PRETRAIN) --save $@.partial | tee build/pretrain.log
	@mv $@.partial $@

ifeq ($(wildcard gpt2_124M.bin),)
run: train_gpt2_sft $(IMDB) build/imdb_lm_d2.bin
	@echo "stage 2: fine-tuning build/imdb_lm_d2.bin on the 25,000 labelled training reviews"
	@set -o pipefail; ./train_gpt2_sft $(FINETUNE) --save build/imdb_d2_sft.bin | tee build/run.log
else
run: train_gpt2_sft $(IMDB)
	@mkdir -p build
	@echo "fine-tuning the pretrained gpt2_124M.bin"
	@set -o pipefail; ./train_gpt2_sft $(RUN_PRETRAINED) --save build/imdb_gpt2_124M_sft.bin | tee build/run.log
endif

clean:
	rm -f train_gpt2_sft test_sft
	rm -rf build/test_sft_* build/train_gpt2_sft_* build/bench_sft build/flags
