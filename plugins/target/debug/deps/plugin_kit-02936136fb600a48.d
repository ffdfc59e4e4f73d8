/work/main/plugins/target/debug/deps/plugin_kit-02936136fb600a48.d: kit/src/lib.rs

/work/main/plugins/target/debug/deps/plugin_kit-02936136fb600a48: kit/src/lib.rs

kit/src/lib.rs:
