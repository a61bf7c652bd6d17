/* Row 3's floor (scripts/bench): the least a SPANK plugin can cost an sbatch, a C plugin
 * that registers the same two options as slurm-one's and does nothing else. Built by
 * scripts/bench-lib/cluster.py with gcc against <slurm/spank.h>. */
#include <stddef.h>
#include <slurm/spank.h>

SPANK_PLUGIN(spank_floor, 1);

static int accept_option(int val, const char *optarg, int remote)
{
	(void)val;
	(void)optarg;
	(void)remote;
	return 0;
}

static struct spank_option options[] = {
	{ "one-template", "NAME", "floor", 1, 0, accept_option },
	{ "one-cpu-share", "F", "floor", 1, 0, accept_option },
	SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (spank_context() == S_CTX_ALLOCATOR || spank_context() == S_CTX_LOCAL) {
		spank_option_register(sp, &options[0]);
		spank_option_register(sp, &options[1]);
	}
	return 0;
}
