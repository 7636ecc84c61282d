//! Children destroyed on the primary: a recursive job's copies on the DR
//! node whose source is gone. [`removed_copies`] finds them (pure); the
//! job reports each and asks the DR node to destroy it, and the DR node's
//! policy decides (`allow_destroy_removed`, off by default: the copy is
//! kept and reported on every push until the operator decides).

use crate::dr_node::DrNode;
use crate::Leg;
use serde::Serialize;
use std::collections::BTreeSet;

/// A copy on the DR node whose source is gone from the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemovedCopy {
    /// The copy (with everything below it), on the DR node.
    pub target: String,
    /// The DR node destroyed it at this push's request.
    pub destroyed: bool,
    /// What the DR node said: what it did, or why it kept the copy.
    pub message: String,
}

impl RemovedCopy {
    /// The warning for the report and the status.
    pub fn warning(&self) -> String {
        if self.destroyed {
            format!(
                "{}: its source was destroyed on the primary; the DR node destroyed its copy ({})",
                self.target, self.message
            )
        } else {
            format!(
                "{}: its source was destroyed on the primary; the DR node keeps its copy: {}",
                self.target, self.message
            )
        }
    }
}

/// The copies strictly below `root` in `on_dr` (the DR node's tree) that
/// no source dataset maps to (`expected`: the targets of the job's source
/// tree), topmost only: a removed child's own children go with it.
pub fn removed_copies(root: &str, on_dr: &[String], expected: &BTreeSet<String>) -> Vec<String> {
    let mut sorted: Vec<&String> = on_dr.iter().collect();
    sorted.sort();
    let mut out: Vec<String> = Vec::new();
    for d in sorted {
        let below_root = d
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'));
        let under_removed = out.iter().any(|r| {
            d.strip_prefix(r.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        });
        if below_root && !under_removed && !expected.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Finds this job's removed copies on the DR node and asks it to destroy
/// each (with `--dry-run`, only finds them). A failed listing is a
/// warning: the push itself succeeded.
pub(crate) async fn handle_removed<P, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    sources: &[String],
) -> Result<Vec<RemovedCopy>, String> {
    let root = &ctx.target.dataset;
    let expected: BTreeSet<String> = sources.iter().filter_map(|s| ctx.target_for(s)).collect();
    let on_dr = ctx.dr.list_tree(root).await.map_err(|e| {
        format!("could not list the DR node's copies below {root} to find children destroyed on the primary: {e}")
    })?;
    let mut out = Vec::new();
    for target in removed_copies(root, &on_dr, &expected) {
        let copy = if ctx.options.dry_run {
            RemovedCopy {
                target,
                destroyed: false,
                message: "would ask the DR node to destroy it (--dry-run)".into(),
            }
        } else {
            match ctx.dr.destroy_copy(&target).await {
                Ok(message) => RemovedCopy {
                    target,
                    destroyed: true,
                    message,
                },
                Err(e) => RemovedCopy {
                    target,
                    destroyed: false,
                    message: e.to_string(),
                },
            }
        };
        tracing::warn!(target = %copy.target, destroyed = copy.destroyed, message = %copy.message, "source destroyed on the primary");
        out.push(copy);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_topmost_copies_below_the_root_without_a_source_are_removed() {
        let on_dr = list(&[
            "backup/home",
            "backup/home/a",
            "backup/home/gone",
            "backup/home/gone/deeper",
            "backup/home/a/gone2",
            "backup/homework",
            "backup",
        ]);
        let expected = set(&["backup/home", "backup/home/a"]);
        assert_eq!(
            removed_copies("backup/home", &on_dr, &expected),
            ["backup/home/a/gone2", "backup/home/gone"]
        );
    }

    #[test]
    fn nothing_is_removed_when_the_trees_match() {
        let on_dr = list(&["backup/home", "backup/home/a"]);
        assert!(removed_copies(
            "backup/home",
            &on_dr,
            &set(&["backup/home", "backup/home/a"])
        )
        .is_empty());
        assert!(removed_copies("backup/home", &[], &set(&["backup/home"])).is_empty());
    }
}
