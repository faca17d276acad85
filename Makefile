# The two commands: `make demo` runs the whole pipeline locally, `make test` runs every test.
# Both install what they need on a fresh machine (scripts/setup.sh).

CARGO ?= cargo
DEMO_ARGS ?=

.PHONY: demo test build check bench clean stack-up stack-down

demo:
	scripts/setup.sh
	scripts/demo.sh $(DEMO_ARGS)

test:
	scripts/test.sh

build:
	$(CARGO) build --release --locked

check: build
	./target/release/pulse check pulse.toml

bench: build
	./target/release/pulse bench decode

stack-up:
	scripts/stack up

stack-down:
	scripts/stack down

clean:
	scripts/stack down
	rm -rf .stack target
