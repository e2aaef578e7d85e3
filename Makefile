# Build, test and run train_gpt2_sft.
#   make            build the trainer and the test
#   make test       build, generate missing reference files (PyTorch), run all tests
#   make run        build, prepare IMDB, fine-tune, evaluate
#   make NO_OMP=1 … the same without OpenMP (single thread)
#   make asan / make ubsan   the tests under AddressSanitizer / UndefinedBehaviorSanitizer

CC ?= cc
PYTHON ?= /usr/bin/python3
OPT ?= -O3 -march=native
CFLAGS ?= $(OPT) -ffp-contract=fast
CFLAGS += -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
LDLIBS = -lm
REF = build/ref

ifeq ($(NO_OMP),1)
  OMP_FLAGS =
else
  OMP_FLAGS = -fopenmp
endif

.PHONY: all test test-c test-python run asan ubsan clean reference

all: train_gpt2_sft test_sft

train_gpt2_sft: train_gpt2_sft.c
	$(CC) $(CFLAGS) $(OMP_FLAGS) -o $@ $< $(LDLIBS)

test_sft: test_sft.c train_gpt2_sft.c
	$(CC) $(CFLAGS) $(OMP_FLAGS) -o $@ $< $(LDLIBS)

# Reference files: random GPT-2 checkpoints (tiny and 124M shapes) and the
# PyTorch debug states the C test compares against.
REF_FILES = $(REF)/gpt2_tiny.bin $(REF)/gpt2_tiny_debug_state.bin $(REF)/gpt2_tiny_reg_debug_state.bin \
            $(REF)/gpt2_124M.bin $(REF)/gpt2_124M_debug_state.bin
reference: $(REF_FILES)
$(REF_FILES) &: dev/train_gpt2_sft.py
	$(PYTHON) dev/train_gpt2_sft.py test-inputs --out-dir $(REF)

test-c: test_sft reference
	./test_sft $(REF)/gpt2_tiny.bin $(REF)/gpt2_tiny_debug_state.bin $(REF)/gpt2_tiny_reg_debug_state.bin
	./test_sft $(REF)/gpt2_124M.bin $(REF)/gpt2_124M_debug_state.bin

test: test-c

SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
asan: reference
	$(CC) $(SAN_FLAGS) -fsanitize=address -o build/test_sft_asan test_sft.c $(LDLIBS)
	./build/test_sft_asan $(REF)/gpt2_tiny.bin $(REF)/gpt2_tiny_debug_state.bin $(REF)/gpt2_tiny_reg_debug_state.bin
ubsan: reference
	$(CC) $(SAN_FLAGS) -fsanitize=undefined -fno-sanitize-recover=all -o build/test_sft_ubsan test_sft.c $(LDLIBS)
	./build/test_sft_ubsan $(REF)/gpt2_tiny.bin $(REF)/gpt2_tiny_debug_state.bin $(REF)/gpt2_tiny_reg_debug_state.bin

clean:
	rm -f train_gpt2_sft test_sft
	rm -rf build/test_sft_*
