# The paper's third autoencoder: 512-token texts -> N=128 latents, for the long-context conditional tasks
# (XSum, SQuAD2.0; Sec. 7). Wikipedia with BERT-base, Table 7's optimisation.
out_dir = 'out/ae_wiki_l512_n128'
data = 'hf:wikimedia/wikipedia:20231101.en'
val_size = 2000
encoder = 'bert-base-uncased'
max_len = 512
n_latents = 128
n_layers = 12
batch_size = 1024
micro_batch_size = 32    # per GPU, accumulated to 1024 over 8 GPUs x 4 micro-steps
max_steps = 500000
eval_interval = 5000
