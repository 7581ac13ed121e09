from freqkv_cli.cli.entry import main

main()
