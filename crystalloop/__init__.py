"""What every component shares and none owns: where crystalloop keeps its files.

It lives apart from agent/, generators/, dft/ and policies/ so that no component imports
another just to find a directory."""
