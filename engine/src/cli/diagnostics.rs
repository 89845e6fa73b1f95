//! Rendering errors for people: miette's graphical report, coloured only when
//! stderr is a terminal and `NO_COLOR` is unset, at a fixed width otherwise so
//! that snapshots and CI logs are stable.

use std::io::IsTerminal;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

pub fn render(diag: &dyn Diagnostic) -> String {
    let color = colors_on();
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    if handler.render_report(&mut out, diag).is_err() {
        out = format!("error: {diag}\n");
    }
    out
}

pub fn eprint(diag: &dyn Diagnostic) {
    eprint!("{}", render(diag));
}

fn colors_on() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
