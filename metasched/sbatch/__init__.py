"""sbatch's options, read as sbatch reads them, turned into a JobSpec and back.

options.py   the table: every sbatch option of Slurm 22.05-25.11, each understood (a JobSpec
             field; placement models it), passed through to the site's sbatch unchanged,
             acted on by msub itself, or refused at submit with the reason
argv.py      how sbatch reads them: getopt_long over the command line, #SBATCH lines (and
             where they stop), SBATCH_* variables, #PBS/#BSUB lines
resolve.py   sbatch's precedence (command line > SBATCH_* > #SBATCH) into a JobSpec, the
             daemon's merge of a script's lines under a spec, and the spec back into the
             options the agent gives the site's sbatch

msub, metaschedd and the agent all use these, so an option means the same to each of them.
"""
