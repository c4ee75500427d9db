//! The maintenance role (`rose scheduler`): leader-elected cron jobs for
//! audio and session cleanup, memory pruning, backups and the stale-job
//! reaper. The jobs arrive with the scheduler work; until then this crate
//! only holds the role's place in the workspace, and no command runs it.
