//! The names of this process's `rpc-*` threads, for the tests that count them (each in
//! a binary of its own, since tests running in parallel in one process would disturb
//! the count). Linux keeps at most 15 bytes of a name in `/proc/self/task/*/comm`.

/// The names of this process's threads that start with `rpc-`, sorted.
pub(crate) fn rpc_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm = task.expect("task").path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            let name = name.trim().to_owned();
            if name.starts_with("rpc-") {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}
