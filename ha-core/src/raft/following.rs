//! The follower's side of replication: appends and snapshot installs.

use super::*;

impl Raft {
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        commit: LogIndex,
    ) -> Result<(), StepError> {
        if prev_index < self.log.committed {
            // Everything up to our commit index matches the leader's log.
            let match_index = self.log.committed;
            self.send_after_persist(from, self.accepted(match_index));
            return Ok(());
        }
        if self.log.matches(prev_index, prev_term) {
            let last_new = self
                .log
                .append_from_leader(prev_index, entries)
                .map_err(StepError::Protocol)?;
            self.log.commit_to(commit.min(last_new));
            self.send_after_persist(from, self.accepted(last_new));
        } else {
            let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
            self.send_after_persist(
                from,
                Body::AppendResponse(AppendOutcome::Rejected {
                    rejected: prev_index,
                    hint_index,
                    hint_term,
                }),
            );
        }
        Ok(())
    }

    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) {
        if index <= self.log.committed {
            // Nothing new: we have all of it committed already.
            let match_index = self.log.committed;
            self.send_after_persist(from, self.accepted(match_index));
            return;
        }
        // A snapshot that names no configuration: its sender saw no
        // configuration entry up to `index`, so the configuration there is
        // the bootstrapped one, which this node's committed prefix holds
        // (not a later entry of its own that may have been overwritten).
        let conf = if membership.is_empty() {
            self.log.conf_at(self.log.committed).1.clone()
        } else {
            membership
        };
        #[cfg(feature = "planted-bugs")]
        if self
            .config
            .has_bug(PlantedBug::SnapshotKeepsConflictingSuffix)
        {
            let keep_suffix = self
                .log
                .install_snapshot_keeping_any_suffix(index, term, conf);
            self.installed_snapshot = Some(SnapshotInstall {
                index,
                term,
                keep_suffix,
            });
            // The kept log answered as matching the leader's, as a core that
            // keeps a suffix in order to spare its sending would.
            self.send_after_persist(from, self.accepted(self.log.last_index()));
            return;
        }
        // The answer is the snapshot's index, never this log's last: entries
        // kept after a matching snapshot entry may still conflict with the
        // leader's (Log Matching speaks of the entries before a match, not
        // after), and the appends that follow check them one by one.
        let keep_suffix = self.log.install_snapshot(index, term, conf);
        #[cfg(feature = "planted-bugs")]
        if self.config.has_bug(PlantedBug::AppliedBeforeRestore) {
            self.log.applied = self.log.applied.max(index);
        }
        self.installed_snapshot = Some(SnapshotInstall {
            index,
            term,
            keep_suffix,
        });
        self.send_after_persist(from, self.accepted(index));
    }

    /// The answer to an append or snapshot that left this log matching the
    /// leader's up to `match_index`.
    pub(super) fn accepted(&self, match_index: LogIndex) -> Body {
        Body::AppendResponse(if self.repair.is_some() {
            AppendOutcome::RepairAccepted { match_index }
        } else {
            AppendOutcome::Accepted { match_index }
        })
    }
}
