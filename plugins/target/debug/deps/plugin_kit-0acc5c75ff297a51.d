/work/main/plugins/target/debug/deps/plugin_kit-0acc5c75ff297a51.d: kit/src/lib.rs

/work/main/plugins/target/debug/deps/libplugin_kit-0acc5c75ff297a51.rlib: kit/src/lib.rs

/work/main/plugins/target/debug/deps/libplugin_kit-0acc5c75ff297a51.rmeta: kit/src/lib.rs

kit/src/lib.rs:
