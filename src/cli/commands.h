/* commands.h - one entry point per `tinysam CMD`; argv[0] is the command name. */
#ifndef TS_CLI_COMMANDS_H
#define TS_CLI_COMMANDS_H

int ts_cli_segment(int argc, char **argv);
int ts_cli_embed(int argc, char **argv);
int ts_cli_convert(int argc, char **argv);
int ts_cli_info(int argc, char **argv);
int ts_cli_everything(int argc, char **argv);
int ts_cli_serve(int argc, char **argv);
int ts_cli_quantize(int argc, char **argv);
int ts_cli_eval(int argc, char **argv);
int ts_cli_distill(int argc, char **argv);

#endif
