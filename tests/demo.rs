//! The README's main job: the `demo` example runs to completion, kills its worker
//! halfway, sees the master notice and every task finish, and exits 0.

mod example_bins;

use std::time::Duration;

use example_bins::Node;

/// The demo takes a few seconds (debug build, 2 cores); this only catches a hang.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_demo_runs_its_batch_through_a_lost_worker() {
    let mut demo = Node::spawn("demo", "demo", &[]);
    let status = demo.wait_exit(LIMIT);
    let output = demo.output();
    assert!(status.success(), "demo: {status}\n{output}");
    for needle in [
        "MASTER worker registered id=w3 address=client-mode",
        "killing worker w2",
        "MASTER worker lost id=w2 ",
        "  per worker   w1 ",
        "  task asks    p50 ",
        "DEMO OK tasks=300/300 ",
        // The live view: each env's status line and endpoint table.
        "  metrics env=driver conns=",
        "  metrics env=master conns=",
        "  metrics env=worker-w1 conns=",
        "  endpoint name=Master kind=dedicated ",
        "  endpoint name=Worker kind=shared ",
    ] {
        assert!(
            demo.saw(needle),
            "no '{needle}' in the demo's output\n{output}"
        );
    }
}
