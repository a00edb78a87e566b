"""The paper's experiments (Tables 1-7, Fig. 3) on top of the library; imported only on demand."""
