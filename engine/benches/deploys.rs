//! Deployment costs, side by side in one run: the switch time (the healthy new
//! slot handed to the traffic switch -> its first answer through the public
//! URL) behind nginx (reload) and behind HAProxy (runtime API), and the whole
//! blue-green deploy (start -> live, previous kept), for `command` instances
//! of the example shop service on this machine. Then the progressive
//! strategies: the time of one rolling batch (start, health, add, drain,
//! stop) over 4 replicas, and a canary step's cost beyond its configured
//! pause (the engine's own overhead, proxy reload included).
//!
//! Run: `cargo bench -p pipe --bench deploys`.

mod common;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::{RUNS, median, ms};
use support::Test;
use support::deploy::{Haproxy, shop_app};
use support::servers::{Nginx, free_port};

fn main() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let traffic = format!(
        r#"traffic "nginx-switch" file="{}/app.inc" upstream="app" test="{}" reload="{}""#,
        nginx.prefix.display(),
        nginx.args("test"),
        nginx.args("reload")
    );
    let (nginx_switch, nginx_deploy) = measure("nginx", nginx.port, blue, green, &traffic);

    let (blue, green) = (free_port(), free_port());
    let haproxy = Haproxy::start(&[("blue", blue), ("green", green)]);
    let traffic = format!(r#"traffic "haproxy-switch" socket="127.0.0.1:{}" backend="app""#, haproxy.admin);
    let (haproxy_switch, haproxy_deploy) = measure("haproxy", haproxy.port, blue, green, &traffic);

    println!("blue-green, command instances, medians of {RUNS} deploys");
    println!(
        "  switch time, healthy -> served:  nginx {:>6.1} ms (target < 300)   HAProxy {:>6.1} ms (target < 50)",
        ms(nginx_switch),
        ms(haproxy_switch)
    );
    println!(
        "  whole deploy, start -> live:     nginx {:>6.1} ms                  HAProxy {:>6.1} ms",
        ms(nginx_deploy),
        ms(haproxy_deploy)
    );

    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let names: Vec<String> = (1..=5).map(|i| format!("s{i}")).collect();
    let servers: Vec<(&str, u16)> = names.iter().map(String::as_str).zip(ports.iter().copied()).collect();
    let fleet = Haproxy::start(&servers);
    let slots: String = ports.iter().enumerate().map(|(i, p)| format!("slot \"{}\" port={p}; ", i + 1)).collect();
    let strategy = format!(
        r#"strategy="rolling" version="${{env.V}}" {{
            slots {{ {slots}}}
            replicas 4
            batch 1
            traffic "haproxy-switch" socket="127.0.0.1:{}" backend="app""#,
        fleet.admin
    );
    let batch = overhead("rolling", &strategy);

    let (blue, green) = (free_port(), free_port());
    let canary_proxy = Haproxy::start(&[("blue", blue), ("green", green)]);
    let strategy = format!(
        r#"strategy="canary" version="${{env.V}}" {{
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            steps {{ weight 10 pause="200ms"; weight 50 pause="200ms"; weight 100 }}
            traffic "haproxy-switch" socket="127.0.0.1:{}" backend="app""#,
        canary_proxy.admin
    );
    let haproxy_step = overhead("canary-haproxy", &strategy);
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let strategy = format!(
        r#"strategy="canary" version="${{env.V}}" {{
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            steps {{ weight 10 pause="200ms"; weight 50 pause="200ms"; weight 100 }}
            traffic "nginx-switch" file="{}/app.inc" upstream="app" test="{}" reload="{}""#,
        nginx.prefix.display(),
        nginx.args("test"),
        nginx.args("reload")
    );
    let nginx_step = overhead("canary-nginx", &strategy);
    println!("progressive, command instances, medians over {RUNS} deploys");
    println!("  rolling batch (start, health, add, drain, stop), 4 replicas behind HAProxy: {:>6.1} ms", ms(batch));
    println!(
        "  canary step beyond its pause:    nginx {:>6.1} ms                  HAProxy {:>6.1} ms",
        ms(nginx_step),
        ms(haproxy_step)
    );
}

/// Deploys RUNS + 1 versions with `strategy` (the first fills the slots);
/// returns the median of the per-batch or per-step times pipe reports.
fn overhead(name: &str, strategy: &str) -> Duration {
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" {strategy}
            instance "command" start="exec {app}" {{ env {{ VERSION "${{deploy.version}}" }} }}
            health "http-check" path="/health" attempts=50 interval="20ms"
        }}
    }}
}}
"#,
        app = shop_app().display()
    ));
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let out = test.pipe(&["run"], &[("V", &format!("v{i}"))]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        if i > 0 {
            let spent = out.record()["steps"][0]["details"]["overhead_ms"].clone();
            for ms in spent.as_array().expect("overhead_ms").iter().filter_map(|v| v.as_f64()) {
                times.push(Duration::from_secs_f64(ms / 1000.0));
            }
        }
    }
    let _ = test.pipe(&["deploy", "stop"], &[("V", "-")]);
    median(&mut times)
}

/// Deploys RUNS + 1 versions (the first only fills a slot); returns the
/// median switch time and deploy step duration.
fn measure(name: &str, public: u16, blue: u16, green: u16, traffic: &str) -> (Duration, Duration) {
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" strategy="blue-green" version="${{env.V}}" {{
            instance "command" start="exec {app}" {{ env {{ VERSION "${{deploy.version}}" }} }}
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            health "http-check" path="/health" attempts=50 interval="20ms"
            {traffic}
            verify url="http://127.0.0.1:{public}/version" body-contains="${{deploy.version}}" times=3
            keep-previous "1h"
        }}
    }}
}}
"#,
        app = shop_app().display()
    ));
    let (mut switch, mut deploy) = (Vec::new(), Vec::new());
    for i in 0..=RUNS {
        let out = test.pipe(&["run"], &[("V", &format!("v{i}"))]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let step = &out.record()["steps"][0];
        if i > 0 {
            let ms = step["details"]["switch_ms"].as_f64().expect("switch_ms");
            switch.push(Duration::from_secs_f64(ms / 1000.0));
            deploy.push(Duration::from_millis(step["duration_ms"].as_u64().expect("duration")));
        }
    }
    let _ = test.pipe(&["deploy", "stop"], &[("V", "-")]);
    (median(&mut switch), median(&mut deploy))
}
