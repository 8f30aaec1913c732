"""What a change is: its values, its diffs, its wire form, its ids."""
