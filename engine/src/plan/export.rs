//! `pipe graph`: the plan as Graphviz dot, a Mermaid flowchart, or indented text.

use std::fmt::Write;

use super::{Edge, Plan, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

impl Plan {
    pub fn render(&self, format: GraphFormat) -> String {
        match format {
            GraphFormat::Text => self.to_text(),
            GraphFormat::Dot => self.to_dot(),
            GraphFormat::Mermaid => self.to_mermaid(),
        }
    }

    fn to_text(&self) -> String {
        let mut out = format!("pipeline {} ({} steps)\n", self.pipeline, self.len());
        let mut current: Option<String> = None;
        let mut order = self.topological();
        // Group by stage in the order stages were written, keeping dependency order inside.
        let rank = |stage: &str| self.stages.iter().position(|s| s.name == stage).unwrap_or(usize::MAX);
        order.sort_by_key(|&n| rank(&self.graph[n].stage));
        for n in order {
            let step = &self.graph[n];
            let group = match step.role {
                Role::PipelineHook(t) => format!("pipeline {}", t.keyword()),
                _ => format!("stage {}", step.stage),
            };
            if current.as_deref() != Some(&group) {
                let needs = self
                    .stages
                    .iter()
                    .find(|s| s.name == step.stage && !step.role.is_hook())
                    .filter(|s| !s.needs.is_empty())
                    .map(|s| format!(" (needs {})", s.needs.join(", ")))
                    .unwrap_or_default();
                let _ = writeln!(out, "{group}{needs}");
                current = Some(group);
            }
            let needs = self.needs_of(n);
            let arrow = if needs.is_empty() { String::new() } else { format!("  ← {}", needs.join(", ")) };
            let _ = writeln!(out, "  {}{}", step.id, arrow);
        }
        out
    }

    fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n", escape(&self.pipeline));
        for stage in &self.stages {
            let _ = writeln!(out, "  subgraph \"cluster_{0}\" {{\n    label=\"{0}\";", escape(&stage.name));
            for n in self.graph.node_indices().filter(|&n| self.graph[n].stage == stage.name) {
                let _ = writeln!(out, "    n{} [label=\"{}\"];", n.index(), escape(&self.graph[n].name));
            }
            out.push_str("  }\n");
        }
        for n in self.graph.node_indices().filter(|&n| self.graph[n].stage.is_empty()) {
            let _ = writeln!(out, "  n{} [label=\"{}\", style=dashed];", n.index(), escape(&self.graph[n].id));
        }
        for e in self.graph.raw_edges() {
            let style = if e.weight == Edge::After { " [style=dashed]" } else { "" };
            let _ = writeln!(out, "  n{} -> n{}{};", e.source().index(), e.target().index(), style);
        }
        out.push_str("}\n");
        out
    }

    fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for stage in &self.stages {
            let _ = writeln!(out, "  subgraph s{}[\"{}\"]", stage_key(&stage.name), escape(&stage.name));
            for n in self.graph.node_indices().filter(|&n| self.graph[n].stage == stage.name) {
                let _ = writeln!(out, "    n{}[\"{}\"]", n.index(), escape(&self.graph[n].name));
            }
            out.push_str("  end\n");
        }
        for n in self.graph.node_indices().filter(|&n| self.graph[n].stage.is_empty()) {
            let _ = writeln!(out, "  n{}([\"{}\"])", n.index(), escape(&self.graph[n].id));
        }
        for e in self.graph.raw_edges() {
            let arrow = if e.weight == Edge::After { "-.->" } else { "-->" };
            let _ = writeln!(out, "  n{} {} n{}", e.source().index(), arrow, e.target().index());
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn stage_key(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}
