# A patch of Snakemake 9's internals, kept apart: two runs may share one results folder (docs/reliability.md),
# and an artifact that another process finished after this run built its DAG must not be deleted under that
# run's readers, nor a finished one removed because its job was killed after publishing it. Included first
# by the Snakefile; it wraps Job.remove_existing_output and Job.cleanup.
from pathlib import Path


def _keep_artifacts_finished_meanwhile():
    """Before a job runs, Snakemake removes its existing outputs: also one that was missing when the DAG was
    built and that another process finished since (a second run sharing this results folder, or a job that
    outlived a killed Snakemake). Removing it would pull a finished artifact from under that run's
    readers; kept, the job finds it finished and reuses it (elude.pipeline.stages.run_logged). Outputs that existed
    when the DAG was built (--forcerun, an incomplete job) are removed as before. This replaces Snakemake 9's
    Job.remove_existing_output with the same steps plus that exception (docs/reliability.md)."""
    from snakemake.io import is_flagged
    from snakemake.jobs import Job

    async def remove_existing_output(self):
        missing = {str(f) for f in self.dag.reason(self).missing_output}
        kept = [f for f in self.output if str(f) in missing and Path(f, "manifest.json").is_file()]
        for f in self.output:
            if is_flagged(f, "update") or f in kept:
                continue
            try:
                await f.remove(remove_non_empty_dir=False)
            except FileNotFoundError:
                pass
        if kept:  # and its log, which the job appends to
            logger.info(f"Keeping {', '.join(map(str, kept))}: finished by another process since the DAG was built")
            return
        for f in self.log:
            await f.remove(remove_non_empty_dir=False)

    if hasattr(Job, "remove_existing_output"):
        Job.remove_existing_output = remove_existing_output
    else:
        logger.warning("Snakemake has no Job.remove_existing_output (not Snakemake 9): two runs sharing this "
                       "results folder must not run at the same time")

    # A job killed (SIGTERM: a preemption, Ctrl-C) after it published its artifact counts as failed, and
    # Snakemake would remove the finished folder "since it might be corrupted": its work would be redone from
    # nothing. Our outputs appear only complete (atomic rename, manifest last), so one with a manifest stays.
    if hasattr(Job, "cleanup"):
        remove_outputs_of_failed_job = Job.cleanup

        async def cleanup(self, skip_outputs):
            finished = [f for f in self.output if Path(f, "manifest.json").is_file()]
            if finished:
                logger.info(f"Keeping {', '.join(map(str, finished))}: published complete before the job failed")
            return await remove_outputs_of_failed_job(self, [*skip_outputs, *finished])

        Job.cleanup = cleanup


_keep_artifacts_finished_meanwhile()
