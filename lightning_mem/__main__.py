from lightning_mem.cli import main

if __name__ == "__main__":
    main()
